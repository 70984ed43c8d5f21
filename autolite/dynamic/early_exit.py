"""The ``early-exit`` pass: batched early exit for BERT-like sequence classifiers.

Small exit heads (dense -> tanh -> classes on the mean of the real tokens' states, or ``[CLS]``'s) sit after
chosen layers. They are trained by self-distillation from the final head on the fit part of the calibration
texts (backbone frozen, so the pooled features are computed once; inputs standardised per feature and
dropout while training, the standardisation then folded into the first linear), and one
confidence threshold is calibrated on the held-out part: the lowest (most exits) whose held-out accuracy
stays within ``max_drop`` points of the full model's. At run time a row whose exit confidence (max softmax
probability) reaches the threshold **leaves the batch**: the remaining rows are gathered with
``index_select`` (and trailing padding trimmed), so later layers compute a smaller batch; when no row is
left the remaining layers are skipped. The exited rows' logits (and their last hidden state) are scattered
back in order, so callers see the usual ``(B, C)`` logits.

The heads and the calibrated threshold are weights (``<encoder>.exits.*``, ``<encoder>.exit_threshold``):
``autolite.load`` rebuilds the encoder from the recipe and reads them back bit-identically.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from autolite.arch import base_model
from autolite.config import PassConfig
from autolite.distill.losses import kd_loss
from autolite.dynamic.calib import (check_budget, check_threshold, has_classifier, split_calib, targets,
                                    text_batches, token_mask)
from autolite.errors import RecipeError
from autolite.eval.forward import mean_pool
from autolite.passes import PassContext, register_pass

log = logging.getLogger(__name__)
NEVER = 2.0  # threshold of an uncalibrated encoder: no confidence reaches it
POOLS = ("mean", "cls")  # what an exit head reads: the mean of the real tokens' states, or [CLS]'s


@dataclasses.dataclass
class EarlyExit(PassConfig):
    """Exit heads after ``layers`` (0-based, -1: on the embeddings, a bag-of-words exit that runs no layer;
    None: every layer but the last), rows leaving the batch.

    ``threshold``: exit when the head's max softmax probability reaches it (in (0, 1]); None calibrates it
    on the held-out ``holdout`` fraction of the calibration texts to lose at most ``max_drop`` accuracy
    points (against the labels when given, else against the full model's predictions). ``epochs``, ``lr``,
    ``temperature``, ``alpha``: the heads' self-distillation (``autolite.distill.losses.kd_loss``). ``pool``:
    the heads read the mean of the real tokens' states ("mean") or the ``[CLS]`` state ("cls"). ``dropout``:
    on the head's input and hidden layer while it trains (the fit texts are few; 0 turns it off).
    """

    name = "early-exit"
    layers: list[int] | None = None
    threshold: float | None = None
    max_drop: float = 1.0
    holdout: float = 0.3
    epochs: int = 40
    lr: float = 1e-3
    temperature: float = 2.0
    alpha: float = 0.7
    pool: str = "mean"
    max_length: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise RecipeError(f"early-exit: pool must be one of {POOLS}, got {self.pool!r}")
        check_threshold(self.name, "threshold", self.threshold)
        check_budget(self.name, self.max_drop, self.holdout)
        if self.layers is not None and (not isinstance(self.layers, (list, tuple)) or not self.layers or any(
                not isinstance(i, int) or i < -1 for i in self.layers)):
            raise RecipeError(f"early-exit: layers must be a non-empty list of layer indices >= -1 (-1: on the "
                              f"embeddings), got {self.layers!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0 or not self.lr > 0:
            raise RecipeError("early-exit: epochs must be an integer >= 0 and lr > 0")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise RecipeError(f"early-exit: dropout must be in [0, 1), got {self.dropout!r}")


class ExitHead(nn.Module):
    """Pooled state ``(B, H)`` -> logits ``(B, C)``: dense, tanh, classes (the pooler + head shape)."""

    def __init__(self, hidden: int, classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)
        self.drop = nn.Dropout(dropout)  # no weights: active only while the head trains

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.dense(self.drop(pooled)))))


class EarlyExitEncoder(nn.Module):
    """The BERT encoder's layers with exit heads; keeps the state-dict keys of ``layer``.

    After ``forward``, the classifier's forward hook (:meth:`scatter_exits`) puts the exited rows' logits
    into the classifier's output. Per-thread state, so concurrent forwards do not mix.
    """

    def __init__(self, encoder: nn.Module, exit_layers: list[int], hidden: int, classes: int,
                 pool: str = "mean", dropout: float = 0.0) -> None:
        super().__init__()
        self.config, self.pool = encoder.config, pool
        self.layer = encoder.layer
        self.exits = nn.ModuleDict({str(i): ExitHead(hidden, classes, dropout) for i in exit_layers})
        self.register_buffer("exit_threshold", torch.tensor(NEVER))
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_exit_layers: torch.Tensor | None = None  # per row of the last batch: layer it left after

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: Any = None, encoder_attention_mask: Any = None,
                past_key_values: Any = None, use_cache: Any = None, **kwargs: Any):
        kwargs.pop("position_ids", None)  # only the embeddings use them
        b, t, _ = hidden_states.shape
        final = hidden_states.new_zeros(hidden_states.shape)  # (B, T, H): each row's last computed state
        rows = torch.arange(b, device=hidden_states.device)  # original index of each row still in the batch
        exit_logits, left_at = None, torch.full((b,), len(self.layer) - 1, dtype=torch.long)
        hidden, mask = hidden_states, attention_mask
        threshold = float(self.exit_threshold)
        for i in range(-1, len(self.layer)):  # -1: the embeddings, before any layer
            if i >= 0:
                hidden = self.layer[i](hidden, mask, **kwargs)  # (R, T', H), R rows still in the batch
            head = self.exits[str(i)] if str(i) in self.exits and not self.training else None
            if head is None:
                continue
            logits = head(self.pooled(hidden, mask))  # (R, C)
            leave = logits.float().softmax(-1).amax(-1) >= threshold  # (R,)
            if not bool(leave.any()):
                continue
            out = rows[leave]
            if exit_logits is None:
                exit_logits = logits.new_zeros((b, logits.shape[-1]))
            exit_logits[out] = logits[leave]
            final[out, :hidden.shape[1]] = hidden[leave]
            left_at[out.cpu()] = i
            keep = (~leave).nonzero().squeeze(1)
            rows, hidden, mask = rows[keep], hidden.index_select(0, keep), _select(mask, keep)
            if rows.numel() == 0:
                break  # every row has left: the remaining layers are not run
            hidden, mask = _trim(hidden, mask)
        if rows.numel():
            final[rows, :hidden.shape[1]] = hidden
        self.last_exit_layers = left_at
        if exit_logits is not None:
            self.pending[threading.get_ident()] = (left_at < len(self.layer) - 1, exit_logits)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=final)

    def pooled(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """What the exit heads read: ``(R, T, H)`` -> ``(R, H)``."""
        if self.pool == "cls":
            return hidden[:, 0]
        valid = token_mask(mask, hidden.shape[0])  # (R, T)
        return mean_pool(hidden, valid) if valid is not None else hidden.mean(1)

    def scatter_exits(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Classifier forward hook: the exited rows take their exit head's logits."""
        pending = self.pending.pop(threading.get_ident(), None)
        if pending is None:
            return output
        exited, logits = pending
        return torch.where(exited.to(output.device)[:, None], logits.to(output.dtype), output)


def _mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """A ``(B, T)`` 0/1 mask as the encoder sees it: ``(B, 1, T, T)`` bool."""
    keys = mask.bool()[:, None, None, :]
    return keys.expand(-1, 1, mask.shape[1], -1)


def _select(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    return mask if mask is None or mask.shape[0] == 1 else mask.index_select(0, keep)


def _trim(hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop trailing positions that are padding in every remaining row (bool or additive 4D masks)."""
    if mask is None or mask.dim() != 4:
        return hidden, mask
    valid = token_mask(mask, hidden.shape[0])  # (R, T)
    length = int(valid.any(0).nonzero().max()) + 1
    if length == hidden.shape[1]:
        return hidden, mask
    return hidden[:, :length], mask[:, :, :length, :length] if mask.shape[2] > 1 else mask[..., :length]


def _classifier(model: nn.Module) -> nn.Module:
    return model.classifier


def install(model: nn.Module, config: EarlyExit) -> EarlyExitEncoder:
    """Swap the encoder for an :class:`EarlyExitEncoder` (uncalibrated) and hook the classifier."""
    if not has_classifier(model) or not hasattr(model, "classifier"):
        raise RecipeError(f"early-exit needs a sequence classifier with a classification head; "
                          f"{type(model).__name__} has none")
    base = base_model(model)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer") or isinstance(encoder, EarlyExitEncoder):
        raise RecipeError(f"early-exit supports BERT-like encoders once per model (bert, roberta); "
                          f"{type(model).__name__} is not one or already has exits")
    n = len(encoder.layer)
    layers = list(config.layers) if config.layers is not None else list(range(n - 1))
    if any(i >= n - 1 for i in layers):
        raise RecipeError(f"early-exit: exit layers must be below the last layer ({n - 1}), got {layers}")
    new = EarlyExitEncoder(encoder, sorted(set(layers)), model.config.hidden_size, model.config.num_labels,
                           config.pool, float(config.dropout))
    dtype = next(encoder.parameters()).dtype
    new.exits.to(dtype)
    base.encoder = new
    _classifier(model).register_forward_hook(new.scatter_exits)
    return new


@register_pass(EarlyExit, restore=lambda model, config, ctx: _restored(model, config))
def apply_early_exit(model: nn.Module, config: EarlyExit, ctx: PassContext) -> nn.Module:
    """Add exit heads, train them from the final head, calibrate the threshold (see module docstring)."""
    if not has_classifier(model):
        raise RecipeError(f"early-exit needs a sequence classifier; {type(model).__name__} has no classification head")
    data = split_calib(ctx, "early-exit", config.holdout)
    encoder = install(model, config)
    fit = _features(model, encoder, ctx.tokenizer, data.fit_texts, config.max_length)
    _train_heads(encoder, fit, config, data.fit_labels)
    if config.threshold is not None:
        threshold = float(config.threshold)
    else:
        held = _features(model, encoder, ctx.tokenizer, data.held_texts, config.max_length)
        threshold, summary = calibrate(encoder, held, targets(held["final"], data.held_labels), config.max_drop)
        ctx.note(f"early-exit: threshold {threshold:.4f} calibrated on {len(data.held_texts)} held-out texts "
                 f"({summary})")
    encoder.exit_threshold.fill_(threshold)
    model.eval()
    return model


def _restored(model: nn.Module, config: EarlyExit) -> nn.Module:
    install(model, config)
    return model


@torch.no_grad()
def _features(model: nn.Module, encoder: EarlyExitEncoder, tokenizer: Any, texts: list[str],
              max_length: int) -> dict[str, torch.Tensor]:
    """Pooled states after each exit layer ``{layer: (N, H)}`` and the final logits ``(N, C)``."""
    threshold = encoder.exit_threshold.clone()
    encoder.exit_threshold.fill_(NEVER)  # the full model: no row leaves
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in [*encoder.exits, "final"]}
    model.eval()
    for inputs in text_batches(tokenizer, texts, 32, max_length):
        out = model(**inputs, output_hidden_states=True)
        for key in encoder.exits:
            states = out.hidden_states[int(key) + 1]  # (B, T, H) after layer ``key``
            parts[key].append(encoder.pooled(states, _mask_4d(inputs["attention_mask"])).float())
        parts["final"].append(out.logits.float())
    encoder.exit_threshold.copy_(threshold)
    return {key: torch.cat(value) for key, value in parts.items()}


def _train_heads(encoder: EarlyExitEncoder, fit: dict[str, torch.Tensor], config: EarlyExit,
                 labels: list[int] | None) -> None:
    """Self-distil each head from the final logits (plus the labels' CE when given), backbone frozen."""
    teacher = fit["final"]
    y = torch.tensor(labels) if labels is not None else None
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (64, H) steps are too small to share; extra threads only wait on each other
    try:
        for key, head in encoder.exits.items():
            _train_head(head, fit[key], teacher, y, config, generator)
    finally:
        torch.set_num_threads(threads)


def _train_head(head: ExitHead, features: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor | None,
                config: EarlyExit, generator: torch.Generator) -> None:
    """AdamW on minibatches of 64 standardised cached features for ``config.epochs`` epochs, then the
    standardisation folded into ``head.dense`` (so the head reads raw pooled states)."""
    dtype = head.dense.weight.dtype
    mean, std = features.mean(0), features.std(0) + 1e-5  # (H,), (H,)
    head.float().train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=0.05)
    with torch.enable_grad():
        for _ in range(config.epochs):
            for idx in torch.randperm(len(teacher), generator=generator).split(64):
                loss = kd_loss(head((features[idx] - mean) / std), teacher[idx], config.temperature, config.alpha,
                               None if y is None else y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():  # W((x - m) / s) + b == (W / s) x + (b - (W / s) m)
        head.dense.weight.div_(std)
        head.dense.bias.sub_(head.dense.weight @ mean)
    head.to(dtype).eval()


@torch.no_grad()
def simulate(encoder: EarlyExitEncoder, held: dict[str, torch.Tensor], threshold: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions ``(N,)`` and the layer each row leaves after ``(N,)`` at ``threshold`` (no forward)."""
    last = len(encoder.layer) - 1
    preds, left_at = held["final"].argmax(-1), torch.full((len(held["final"]),), last)
    done = torch.zeros(len(preds), dtype=torch.bool)
    for key in sorted(encoder.exits, key=int):
        logits = encoder.exits[key](held[key].to(encoder.exits[key].dense.weight.dtype)).float()
        leave = (logits.softmax(-1).amax(-1) >= threshold) & ~done
        preds = torch.where(leave, logits.argmax(-1), preds)
        left_at = torch.where(leave, torch.full_like(left_at, int(key)), left_at)
        done |= leave
    return preds, left_at


def calibrate(encoder: EarlyExitEncoder, held: dict[str, torch.Tensor], truth: torch.Tensor,
              max_drop: float) -> tuple[float, str]:
    """The threshold with the fewest layers run whose held-out accuracy is within ``max_drop`` points."""
    n_layers = len(encoder.layer)
    base = float((held["final"].argmax(-1) == truth).float().mean())
    best = (1.0, float("inf"), base)
    candidates = torch.linspace(0.0, 1.0, 201)[1:].tolist()
    for tau in candidates:
        preds, left_at = simulate(encoder, held, tau)
        acc = float((preds == truth).float().mean())
        cost = float((left_at + 1).float().mean()) / n_layers
        if acc >= base - max_drop / 100.0 - 1e-9 and cost < best[1]:
            best = (tau, cost, acc)
    tau, cost, acc = best
    cost = 1.0 if cost == float("inf") else cost
    return tau, (f"held-out accuracy {100 * acc:.2f} vs {100 * base:.2f} full, {100 * cost:.1f}% of the layers "
                 f"run on average")
