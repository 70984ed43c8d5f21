"""The ``token-drop`` pass: BERT-like encoders keep only the most-attended tokens after chosen layers.

``schedule[i]`` is the share of the input's tokens entering layer ``i`` (see
:mod:`autolite.dynamic.drop_encoder`). Without a schedule, one is searched on the calibration texts: geometric
schedules (all tokens up to layer ``start``, then ``rate ** n`` of them ``n`` layers later) for each start, a
bisection over the rates, and the cheapest (fewest token-layers) whose fidelity against the dense model holds:
with labels, accuracy drop <= ``max_drop`` points; a classifier without labels, top-1 agreement >= 100 -
``max_drop`` percent; an embedding model, mean cosine >= ``min_cosine``. Calibration texts are batched by length,
so dropping hits real tokens (close to batch-1 behaviour, the strictest case). ``recover_steps`` > 0 then distils
the dropping model from the dense one on the calibration texts (KD on logits, or embedding cosine).

The resolved settings are written to ``model.config.token_drop`` (and so into config.json); ``autolite.load``
re-installs the dropping encoder from them (nothing of it lives in the weights).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

import torch

from autolite.config import PassConfig
from autolite.distill.losses import embedding_cosine_loss, kd_loss
from autolite.dynamic.drop_encoder import ALWAYS_KEPT, OUTPUTS, SCORES, TokenDropEncoder
from autolite.errors import DataError, RecipeError, UnsupportedArchitectureError
from autolite.eval import metrics
from autolite.eval.forward import model_device, run_model, tokenize
from autolite.passes import PassContext, register_pass
from autolite.runtime.external import runner_of

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenDrop(PassConfig):
    """Drop low-attention tokens between encoder layers (PoWER-BERT style), schedule given or searched.

    ``schedule``: share of tokens entering each layer (``schedule[0] == 1``, non-increasing); None searches one.
    ``min_length``: inputs of at most this many tokens run unchanged. ``output``: "restore" (dropped positions
    keep their last state) or "kept-mean" (mean pooling sees only kept tokens). ``score``: rank tokens by the
    attention received from all real tokens ("received") or from [CLS] ("cls").
    """

    name = "token-drop"
    schedule: list[float] | None = None
    min_length: int = 16
    output: str = "restore"
    score: str = "received"
    max_drop: float = 1.0
    min_cosine: float = 0.98
    starts: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3])
    rates: list[float] = dataclasses.field(default_factory=lambda: [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    search_batch: int = 16
    recover_steps: int = 0
    recover_lr: float = 3e-5
    recover_batch: int = 16

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise RecipeError(f"token-drop output must be one of {', '.join(OUTPUTS)}, got '{self.output}'")
        if self.score not in SCORES:
            raise RecipeError(f"token-drop score must be one of {', '.join(SCORES)}, got '{self.score}'")
        if self.min_length < 1 or self.search_batch < 1 or self.recover_batch < 1 or self.recover_steps < 0:
            raise RecipeError("token-drop needs min_length, search_batch, recover_batch >= 1 and recover_steps >= 0")
        if not 0 <= self.max_drop <= 100 or not 0 < self.min_cosine <= 1:
            raise RecipeError("token-drop needs 0 <= max_drop <= 100 (points) and 0 < min_cosine <= 1")
        if not self.starts or any(int(s) < 1 for s in self.starts) or not self.rates \
                or any(not 0 < r < 1 for r in self.rates):
            raise RecipeError("token-drop search needs starts >= 1 and rates in (0, 1)")
        if self.schedule is not None:
            check_schedule(self.schedule, self.min_length)


def check_schedule(schedule: list[float], min_length: int) -> None:
    """RecipeError unless ``schedule`` is non-empty, in (0, 1], starts at 1, never rises, and keeps the special
    tokens of the shortest input it applies to."""
    if not schedule or any(not isinstance(s, (int, float)) or not 0 < s <= 1 for s in schedule):
        raise RecipeError(f"token-drop schedule must be a list of shares in (0, 1], got {schedule}")
    if schedule[0] != 1:
        raise RecipeError(f"token-drop schedule[0] must be 1 (the first layer sees every token), got {schedule[0]}")
    if any(b > a for a, b in zip(schedule, schedule[1:])):
        raise RecipeError(f"token-drop schedule must not rise from layer to layer, got {schedule}")
    shortest = min_length + 1
    kept = math.ceil(min(schedule) * shortest)
    if kept < ALWAYS_KEPT:
        raise RecipeError(f"token-drop schedule keeps {kept} of a {shortest}-token input, fewer than the "
                          f"{ALWAYS_KEPT} special tokens ([CLS], [SEP]); raise the smallest share or min_length")


def geometric(layers: int, start: int, rate: float) -> list[float]:
    """All tokens into layers ``< start``, then ``rate ** n`` of them ``n`` layers later."""
    return [1.0] * start + [round(rate ** (i - start + 1), 4) for i in range(start, layers)]


def token_layers(schedule: list[float]) -> float:
    """Share of the dense model's token-layers the schedule computes (a proxy for its cost)."""
    return sum(schedule) / len(schedule)


def encoder_owner(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding the BERT-like ``encoder`` whose layers token-drop wraps; a one-line error otherwise."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not len(layers) or not hasattr(layers[0], "attention") \
            or not hasattr(layers[0].attention, "self"):
        raise UnsupportedArchitectureError(f"token-drop supports BERT-like encoders (BERT, RoBERTa, MiniLM), "
                                           f"not {type(model).__name__}")
    return base


def install(model: torch.nn.Module, schedule: list[float], min_length: int, output: str,
            score: str = "received") -> torch.nn.Module:
    """Replace the encoder by a :class:`TokenDropEncoder` (in place; returns ``model``)."""
    base = encoder_owner(model)
    layers = len(base.encoder.layer)
    if len(schedule) != layers:
        raise RecipeError(f"token-drop schedule has {len(schedule)} entries but the model has {layers} layers")
    base.encoder = TokenDropEncoder(base.encoder, schedule, min_length, output, score)
    return model


@dataclasses.dataclass
class _Reference:
    """The dense model's outputs on the calibration texts (in length-sorted batches)."""

    batches: list[dict[str, torch.Tensor]]
    outputs: list[Any]
    labels: list[torch.Tensor] | None


def _reference(model: torch.nn.Module, ctx: PassContext, config: TokenDrop) -> _Reference:
    texts = list(ctx.calib or [])
    if not texts or ctx.tokenizer is None:
        raise DataError("token-drop schedule search needs calibration texts and the tokenizer (calib=, tokenizer=)")
    order = sorted(range(len(texts)), key=lambda i: len(ctx.tokenizer(texts[i])["input_ids"]))
    chunks = [order[b:b + config.search_batch] for b in range(0, len(order), config.search_batch)]
    batches = [tokenize(ctx.tokenizer, [texts[i] for i in chunk]) for chunk in chunks]
    labels = [torch.tensor([ctx.labels[i] for i in chunk]) for chunk in chunks] if ctx.labels else None
    outputs = [run_model(model, ctx.family, batch) for batch in batches]
    return _Reference(batches, outputs, labels)


def fidelity(model: torch.nn.Module, ref: _Reference, family: Any) -> dict[str, float]:
    """Accuracy (with labels), top-1 agreement (logits) and cosine (embeddings) against the reference."""
    correct = correct_ref = agree = rows = 0
    cosine = 0.0
    for i, batch in enumerate(ref.batches):
        out, base = run_model(model, family, batch), ref.outputs[i]
        rows += len(batch["input_ids"])
        cosine += float(metrics.cosine_per_row(out.embeddings, base.embeddings).sum())
        if out.logits is not None:
            agree += metrics.top1_matches(out.logits, base.logits)[0]
            if ref.labels is not None:
                correct += metrics.accuracy_matches(out.logits, ref.labels[i])[0]
                correct_ref += metrics.accuracy_matches(base.logits, ref.labels[i])[0]
    result = {"cosine": cosine / rows}
    if ref.outputs[0].logits is not None:
        result["agreement"] = agree / rows
        if ref.labels is not None:
            result.update(accuracy=correct / rows, accuracy_ref=correct_ref / rows)
    return result


def within(result: dict[str, float], config: TokenDrop) -> bool:
    if "accuracy" in result:
        return 100 * (result["accuracy_ref"] - result["accuracy"]) <= config.max_drop + 1e-9
    if "agreement" in result:
        return 100 * (1 - result["agreement"]) <= config.max_drop + 1e-9
    return result["cosine"] >= config.min_cosine


def search_schedule(model: torch.nn.Module, config: TokenDrop, ctx: PassContext) -> tuple[list[float], dict]:
    """The cheapest geometric schedule within the fidelity bound on the calibration texts."""
    layers = len(encoder_owner(model).encoder.layer)
    starts = sorted({int(s) for s in config.starts if int(s) < layers})
    if not starts:
        raise RecipeError(f"token-drop starts {config.starts} leave no layer to drop after (the model has {layers})")
    ref = _reference(model, ctx, config)
    trial = copy.deepcopy(model)
    install(trial, [1.0] * layers, config.min_length, config.output, config.score)
    tried: dict[str, dict] = {}

    def passes(schedule: list[float]) -> bool:
        encoder_owner(trial).encoder.schedule = tuple(schedule)
        result = fidelity(trial, ref, ctx.family)
        tried[str(schedule)] = {"schedule": schedule, "cost": round(token_layers(schedule), 4), **result}
        return within(result, config)

    best: list[float] | None = None
    for start in starts:
        rates = sorted(config.rates)
        low, high = 0, len(rates) - 1  # smallest passing rate (fidelity grows with the rate)
        found = None
        while low <= high:
            mid = (low + high) // 2
            if passes(geometric(layers, start, rates[mid])):
                found, high = rates[mid], mid - 1
            else:
                low = mid + 1
        if found is not None:
            candidate = geometric(layers, start, found)
            if best is None or token_layers(candidate) < token_layers(best):
                best = candidate
    if best is None:
        closest = max(tried.values(), key=lambda t: t.get("accuracy", t.get("agreement", t["cosine"])))
        raise RecipeError(f"token-drop: no schedule met the fidelity bound on the calibration texts (closest: "
                          f"{closest}); raise max_drop/lower min_cosine or add milder rates")
    return best, tried[str(best)]


def recover(model: torch.nn.Module, teacher: torch.nn.Module, ctx: PassContext, config: TokenDrop) -> list[float]:
    """Distil the dropping ``model``'s encoder layers from the dense ``teacher`` on the calibration texts (KD on
    logits, mixed half and half with cross-entropy when labels are given; embedding models: pooled cosine)."""
    texts = list(ctx.calib or [])
    if not texts or ctx.tokenizer is None:
        raise DataError("token-drop recovery needs calibration texts and the tokenizer (calib=, tokenizer=)")
    params = [p for p in encoder_owner(model).encoder.layer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.recover_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(config.recover_steps):
        idx = torch.randint(len(texts), (config.recover_batch,), generator=generator).tolist()
        batch = {k: v.to(model_device(model)) for k, v in tokenize(ctx.tokenizer, [texts[i] for i in idx]).items()}
        with torch.no_grad():
            target = teacher(**batch)
        out = model(**batch)
        if getattr(out, "logits", None) is not None:
            labels = torch.tensor([ctx.labels[i] for i in idx], device=out.logits.device) if ctx.labels else None
            loss = kd_loss(out.logits, target.logits, labels=labels)
        else:
            loss = embedding_cosine_loss(out.last_hidden_state, target.last_hidden_state, batch["attention_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if len(losses) % 25 == 0:
            log.info("token-drop recovery: step %d/%d, loss %.4f", len(losses), config.recover_steps, losses[-1])
    model.zero_grad(set_to_none=True)
    return losses


def apply_token_drop(model: torch.nn.Module, config: TokenDrop, ctx: PassContext) -> torch.nn.Module:
    """Install token dropping (searching the schedule when none is given); records the resolved settings."""
    layers = len(encoder_owner(model).encoder.layer)
    if runner_of(model) is not None:
        raise RecipeError("token-drop cannot follow a pass that runs the model in ONNX Runtime/OpenVINO (their "
                          "graphs would not drop tokens); put token-drop first and run it in torch (INT8, compile)")
    if config.schedule is not None and len(config.schedule) != layers:
        raise RecipeError(f"token-drop schedule has {len(config.schedule)} entries but the model has {layers} layers")
    summary: dict = {}
    schedule = config.schedule
    if schedule is None:
        schedule, summary = search_schedule(model, config, ctx)
    resolved = dataclasses.replace(config, schedule=list(schedule))
    teacher = copy.deepcopy(model) if config.recover_steps else None
    install(model, resolved.schedule, resolved.min_length, resolved.output, resolved.score)
    if teacher is not None:
        losses = recover(model, teacher, ctx, resolved)
        ctx.note(f"token-drop: recovery {config.recover_steps} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    model.eval()
    model.config.token_drop = {"schedule": resolved.schedule, "min_length": resolved.min_length,
                               "output": resolved.output, "score": resolved.score}
    ctx.note(f"token-drop: schedule {resolved.schedule} ({100 * token_layers(resolved.schedule):.0f}% of the "
             f"token-layers){'; calibration fidelity ' + str(summary) if summary else ''}")
    return model


def reinstall(model: torch.nn.Module, config: TokenDrop, ctx: PassContext) -> torch.nn.Module:
    """On load: rebuild the dropping encoder from the recorded settings."""
    saved = getattr(model.config, "token_drop", None) or {}
    schedule = config.schedule or saved.get("schedule")
    if not schedule:
        raise RecipeError("token-drop: the saved model records no schedule (config.json lacks token_drop)")
    return install(model, list(schedule), saved.get("min_length", config.min_length),
                   saved.get("output", config.output), saved.get("score", config.score))


register_pass(TokenDrop, after_load=reinstall)(apply_token_drop)
