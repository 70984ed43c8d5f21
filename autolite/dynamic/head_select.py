"""The ``head-select`` pass: runtime attention-head selection for BERT-like encoders.

Per batch and layer, a cheap score from the layer input ranks the heads and only the top ``k`` run: the
q/k/v weight rows and the output projection's columns of those heads are sliced out (``index_select``) and
attention runs with ``k`` heads, so the others are not computed (no masking). The score is the norm of each
head's contribution to the output for the batch's mean-pooled input, ``|| W_o[:, h] (W_v[h] x̄ + b_v[h]) ||``
averaged over the batch: ``B x H x H`` multiply-adds per layer, against ``B x T x 4H x H`` for the
attention projections. ``k`` (one for every layer) is the smallest whose fidelity to the full model on the
calibration texts reaches ``min_fidelity`` (prediction agreement for classifiers, mean embedding cosine
otherwise); it is stored as a buffer, so ``autolite.load`` rebuilds the same model bit-identically.

Compare with static head pruning (``prune-heads``), which removes the same number of heads once: it has no
scoring or slicing cost per batch; ``benchmarks/dynamic_bench.py`` measures both.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autolite.arch import base_model
from autolite.config import PassConfig
from autolite.dynamic.calib import has_classifier, text_batches, token_mask
from autolite.errors import RecipeError
from autolite.eval.forward import mean_pool
from autolite.passes import PassContext, register_pass

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HeadSelect(PassConfig):
    """Run only the top-``heads`` attention heads per layer and batch (None: calibrated to ``min_fidelity``)."""

    name = "head-select"
    heads: int | None = None
    min_fidelity: float = 0.99
    calib_samples: int = 128
    max_length: int = 128

    def __post_init__(self) -> None:
        if self.heads is not None and (not isinstance(self.heads, int) or self.heads < 1):
            raise RecipeError(f"head-select: heads must be an integer >= 1, got {self.heads!r}")
        if not isinstance(self.min_fidelity, (int, float)) or not 0.0 < self.min_fidelity <= 1.0:
            raise RecipeError(f"head-select: min_fidelity must be in (0, 1], got {self.min_fidelity!r}")
        if not isinstance(self.calib_samples, int) or self.calib_samples < 1:
            raise RecipeError("head-select: calib_samples must be an integer >= 1")


class HeadSelectAttention(nn.Module):
    """A BERT attention block (``self`` q/k/v, ``output`` dense + LayerNorm; same state-dict keys) that runs
    only the ``keep`` highest-scoring heads of each batch."""

    reads_float_weights = True  # slices q/k/v rows and o columns per batch: quantization passes leave them float

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.self = attention.self
        self.output = attention.output
        self.num_heads = attention.self.num_attention_heads
        self.head_dim = attention.self.attention_head_size
        self.register_buffer("keep", torch.tensor(self.num_heads))
        self.last_heads: torch.Tensor | None = None  # the heads the last batch ran

    def scores(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per-head score ``(nh,)`` from the layer input ``x`` ``(B, T, H)``."""
        valid = token_mask(mask, x.shape[0])  # (B, T)
        pooled = mean_pool(x, valid) if valid is not None else x.mean(1)  # (B, H)
        v = F.linear(pooled, self.self.value.weight, self.self.value.bias)  # (B, nh * hd)
        v = v.view(v.shape[0], self.num_heads, self.head_dim)  # (B, nh, hd)
        w_o = self.output.dense.weight.view(-1, self.num_heads, self.head_dim)  # (H, nh, hd)
        return torch.einsum("bnd,hnd->bnh", v, w_o).norm(dim=-1).mean(0)  # (nh,)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        x = hidden_states  # (B, T, H)
        k = int(self.keep)
        if k >= self.num_heads:
            heads = torch.arange(self.num_heads, device=x.device)
        else:
            heads = self.scores(x, attention_mask).topk(k).indices.sort().values  # (k,)
        self.last_heads = heads
        cols = (heads[:, None] * self.head_dim + torch.arange(self.head_dim, device=x.device)).reshape(-1)
        b, t, _ = x.shape
        qkv = [F.linear(x, lin.weight.index_select(0, cols), lin.bias.index_select(0, cols))
               .view(b, t, k, self.head_dim).transpose(1, 2)  # (B, k, T, hd)
               for lin in (self.self.query, self.self.key, self.self.value)]
        mask = attention_mask
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(x.dtype)
        context = F.scaled_dot_product_attention(*qkv, attn_mask=mask, scale=self.self.scaling)  # (B, k, T, hd)
        context = context.transpose(1, 2).reshape(b, t, k * self.head_dim)  # (B, T, k * hd)
        dense = self.output.dense
        out = F.linear(context, dense.weight.index_select(1, cols), dense.bias)  # (B, T, H)
        return self.output.LayerNorm(self.output.dropout(out) + x), None


def install(model: nn.Module) -> list[HeadSelectAttention]:
    """Swap every BERT attention block for a :class:`HeadSelectAttention` (all heads kept)."""
    encoder = getattr(base_model(model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not all(hasattr(layer.attention, "self") and hasattr(layer.attention.self, "query")
                                 for layer in layers):
        raise RecipeError(f"head-select supports BERT-like encoders (bert, roberta); {type(model).__name__} "
                          "is not one")
    blocks = []
    for layer in layers:
        if isinstance(layer.attention, HeadSelectAttention):
            raise RecipeError("head-select is already applied to this model")
        layer.attention = HeadSelectAttention(layer.attention)
        blocks.append(layer.attention)
    return blocks


def set_heads(model: nn.Module, heads: int) -> None:
    """Run ``heads`` heads per layer from now on (capped at each layer's head count)."""
    for module in model.modules():
        if isinstance(module, HeadSelectAttention):
            module.keep.fill_(min(heads, module.num_heads))


@torch.no_grad()
def fidelity(model: nn.Module, reference: list[torch.Tensor], batches: list[dict[str, torch.Tensor]]) -> float:
    """Prediction agreement (classifiers) or mean pooled-embedding cosine against ``reference`` outputs."""
    scores = []
    for inputs, ref in zip(batches, reference):
        out = _output(model, inputs)
        if ref.dim() == 2 and has_classifier(model):
            scores.append((out.argmax(-1) == ref.argmax(-1)).float())
        else:
            scores.append(F.cosine_similarity(out, ref, dim=-1))
    return float(torch.cat(scores).mean())


def _output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    if has_classifier(model):
        return out.logits.float()
    return mean_pool(out.last_hidden_state.float(), inputs["attention_mask"])


@register_pass(HeadSelect, restore=lambda model, config, ctx: (install(model), model)[1])
def apply_head_select(model: nn.Module, config: HeadSelect, ctx: PassContext) -> nn.Module:
    """Install the per-batch head selection; calibrate ``k`` on ``ctx.calib`` unless ``heads`` is given."""
    if config.heads is None and (ctx.tokenizer is None or not ctx.calib):
        raise RecipeError("head-select needs a tokenizer and calibration texts to calibrate heads "
                          "(or set heads: N)")
    blocks = install(model)
    model.eval()
    if config.heads is not None:
        set_heads(model, config.heads)
        return model
    batches = list(text_batches(ctx.tokenizer, list(ctx.calib)[:config.calib_samples], 32, config.max_length))
    with torch.no_grad():
        reference = [_output(model, inputs) for inputs in batches]
    total = max(block.num_heads for block in blocks)
    chosen, reached = total, 1.0
    for k in range(total - 1, 0, -1):
        set_heads(model, k)
        score = fidelity(model, reference, batches)
        if score < config.min_fidelity:
            break
        chosen, reached = k, score
    set_heads(model, chosen)
    ctx.note(f"head-select: {chosen} of {total} heads per layer and batch (fidelity {reached:.4f} >= "
             f"{config.min_fidelity} on {sum(len(b['input_ids']) for b in batches)} calibration texts)")
    return model
