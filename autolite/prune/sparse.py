"""The ``sparsify`` pass: unstructured or N:M (2:4) weight sparsity, stored compactly.

Masks are chosen per output row (magnitude ``|W|`` or Wanda ``|W|*||X||``), so every row keeps the same
number of weights and the saved form is ``values (out, kept)`` + a packed bit mask ``(out, in/8)``: at 50%
about 2.1 instead of 4 bytes per FP32 weight. In memory the weights stay dense, so the model runs the same
dense GEMM kernels: **no faster** on a CPU without sparse tensor kernels; only the stored size shrinks.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from autolite.arch import ArchSpec, family_of, is_conv1d
from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.prune.calib import calib_batches, track

PATTERNS = ("2:4", "unstructured")


@dataclasses.dataclass
class Sparsify(PassConfig):
    """Zero ``ratio`` of each weight row (``pattern: unstructured``) or 2 of every 4 (``pattern: "2:4"``).

    ``importance``: "magnitude" or "wanda"; ``storage``: "compact" (values + bit mask; reload with
    ``autolite.load``) or "dense" (zeros kept; loads with plain transformers).
    """

    name = "sparsify"
    pattern: str = "2:4"
    ratio: float = 0.5
    importance: str = "magnitude"
    storage: str = "compact"
    skip_layers: list = dataclasses.field(default_factory=list)
    calib_samples: int = 32

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise RecipeError(f"sparsify: pattern must be one of {PATTERNS}, got '{self.pattern}'")
        if not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise RecipeError(f"sparsify: ratio must be in [0, 1), got {self.ratio!r}")
        if self.pattern == "2:4" and self.ratio != 0.5:
            raise RecipeError("sparsify: pattern 2:4 removes exactly half (ratio 0.5); use pattern unstructured")
        if self.importance not in ("magnitude", "wanda"):
            raise RecipeError(f"sparsify: importance must be magnitude or wanda, got '{self.importance}'")
        if self.storage not in ("compact", "dense"):
            raise RecipeError(f"sparsify: storage must be compact or dense, got '{self.storage}'")

    def kept_per_row(self, in_features: int) -> int:
        return in_features // 2 if self.pattern == "2:4" else in_features - round(self.ratio * in_features)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``(R, C)`` -> uint8 ``(R, ceil(C/8))``, little-endian bits."""
    rows, cols = mask.shape
    padded = torch.zeros(rows, (cols + 7) // 8 * 8, dtype=torch.uint8)
    padded[:, :cols] = mask.to(torch.uint8)
    weights = (2 ** torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (padded.view(rows, -1, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, cols: int) -> torch.Tensor:
    bits = (packed.to(torch.int32)[..., None] >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(packed.shape[0], -1)[:, :cols].bool()


class SparseLinear(nn.Linear):
    """An ``nn.Linear`` with a fixed number of nonzeros per row, saved as values + packed mask.

    It computes with its dense weight (the same kernel as ``nn.Linear``); only its state dict is compact.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, kept: int, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.kept = kept

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor) -> "SparseLinear":
        kept = int(mask[0].sum())
        sparse = cls(linear.in_features, linear.out_features, linear.bias is not None, kept, device="meta")
        sparse.weight = nn.Parameter(linear.weight.data * mask.to(linear.weight.dtype))
        sparse.bias = linear.bias
        return sparse

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        weight = self.weight.detach()
        mask = weight != 0
        rank = mask.float() + torch.arange(weight.shape[1], 0, -1) * 1e-9  # pad rows with exact zeros
        keep = rank.topk(self.kept, dim=1).indices.sort(1).values
        destination[prefix + "sparse_values"] = weight.gather(1, keep).contiguous()
        full = torch.zeros_like(mask)
        full.scatter_(1, keep, True)
        destination[prefix + "sparse_mask"] = pack_bits(full)
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        values, packed = state_dict.get(prefix + "sparse_values"), state_dict.get(prefix + "sparse_mask")
        if values is None or packed is None:
            missing_keys.extend(k for k in (prefix + "sparse_values", prefix + "sparse_mask")
                                if k not in state_dict)
            return
        mask = unpack_bits(packed, self.in_features)
        dense = torch.zeros(self.out_features, self.in_features, dtype=values.dtype)
        dense[mask] = values.reshape(-1)
        self.weight = nn.Parameter(dense, requires_grad=False)
        if self.bias is not None:
            if prefix + "bias" in state_dict:
                self.bias = nn.Parameter(state_dict[prefix + "bias"], requires_grad=False)
            else:
                missing_keys.append(prefix + "bias")


def targets(model: nn.Module, family: ArchSpec, config: Sparsify) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) of every projection inside the transformer layers (not embeddings/heads)."""
    found = []
    for view in family.layers(model):
        if str(view.index) in map(str, config.skip_layers) or f"{view.stack}.{view.index}" in config.skip_layers:
            continue
        for parent in view.module.modules():
            for attr, child in parent.named_children():
                if isinstance(child, nn.Linear) or is_conv1d(child):
                    found.append((parent, attr, child))
    return found


def row_mask(score: torch.Tensor, config: Sparsify) -> torch.Tensor:
    """Keep-mask ``(out, in)`` from scores: top-k per row, or top-2 of every 4 columns."""
    out, cols = score.shape
    if config.pattern == "2:4":
        if cols % 4:
            raise RecipeError(f"sparsify 2:4 needs input widths divisible by 4, got {cols}; use unstructured")
        groups = score.reshape(out, cols // 4, 4)
        keep = groups.topk(2, dim=-1).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).reshape(out, cols)
    keep = score.topk(config.kept_per_row(cols), dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, keep, True)


def _input_norms(model, family, found, ctx, config) -> dict[int, torch.Tensor]:
    sumsq: dict[int, torch.Tensor] = {}
    hooks = [child.register_forward_pre_hook(
        lambda m, a, i=id(child): sumsq.__setitem__(i, sumsq.get(i, 0) + a[0].detach().float().pow(2)
                                                     .reshape(-1, a[0].shape[-1]).sum(0)))
             for _, _, child in found]
    try:
        with torch.no_grad():
            for batch in track(calib_batches(model, family, ctx, samples=config.calib_samples), "wanda norms"):
                model(**batch.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {k: v.sqrt() for k, v in sumsq.items()}


@register_pass(Sparsify, restore=lambda model, config, ctx: restore_sparse(model, config))
def apply_sparsify(model: nn.Module, config: Sparsify, ctx: PassContext) -> nn.Module:
    """Zero the lowest-scoring weights of every projection; compact storage swaps in ``SparseLinear``."""
    family = ctx.family or family_of(model)
    found = targets(model, family, config)
    norms = _input_norms(model, family, found, ctx, config) if config.importance == "wanda" else {}
    dense_only = 0
    with torch.no_grad():
        for parent, attr, child in found:
            conv = not isinstance(child, nn.Linear)
            weight = child.weight.t() if conv else child.weight  # (out, in)
            score = weight.abs().float() * (norms[id(child)][None, :] if id(child) in norms else 1)
            mask = row_mask(score, config)
            if conv or config.storage == "dense":
                weight.mul_(mask.to(weight.dtype))
                dense_only += conv
            else:
                setattr(parent, attr, SparseLinear.from_linear(child, mask))
    ctx.note(f"sparsify: {config.pattern} sparsity ({config.importance}) on {len(found)} projections; the "
             "weights stay dense in memory and run the same dense GEMM, so this is no faster on this CPU; "
             + ("stored as values + bit mask (reload with autolite.load)" if config.storage == "compact"
                else "stored dense (zeros), loads with plain transformers")
             + (f"; {dense_only} Conv1D projections stored dense" if dense_only else ""))
    return model


def restore_sparse(model: nn.Module, config: Sparsify) -> nn.Module:
    """Swap the skeleton's projections for ``SparseLinear`` so the compact weights can be read."""
    if config.storage != "compact":
        return model
    family = family_of(model)
    for parent, attr, child in targets(model, family, config):
        if isinstance(child, nn.Linear):
            setattr(parent, attr, SparseLinear(child.in_features, child.out_features, child.bias is not None,
                                               config.kept_per_row(child.in_features), device="meta"))
    return model
