"""The ``prune-heads`` pass: physically remove the least important attention heads.

Llama-like models with grouped-query attention lose whole KV groups (a KV head with its query heads),
so the group size stays what the kernels and the config expect. T5's relative-position bias is computed
once per stack and shared by every layer, so T5 removes the same heads from every self-attention of a
stack (scores summed over the stack), and the same number everywhere (its config has one ``num_heads``).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.prune.base import StructuredPrune, run_structured
from autolite.prune.structure import HeadGroup, head_groups
from autolite.prune.surgery import remove_heads, restore_layout


@dataclasses.dataclass
class PruneHeads(StructuredPrune, PassConfig):
    """Remove ``ratio`` of the attention heads, ranked by ``importance``.

    ``scope``: "per_layer" (the same number in every layer; the HF config can say so) or "global"
    (ranked across layers, scores normalised per layer). ``round_to``: kept heads per layer are a multiple
    of it. ``skip_layers``: layer indices (or "encoder.3") left whole. ``min_heads``: the fewest a layer
    may keep. ``recover_steps``: distillation steps from the unpruned model after each of ``iterations``
    cuts.
    """

    name = "prune-heads"
    min_heads: int = 1

    def __post_init__(self) -> None:
        self.validate()
        if not isinstance(self.min_heads, int) or self.min_heads < 1:
            raise RecipeError(f"prune-heads: min_heads must be an integer >= 1, got {self.min_heads!r}")


def plan_heads(groups: list[HeadGroup], scores: dict, ratio: float, original: dict, config: PruneHeads,
               family) -> dict[str, torch.Tensor]:
    """Which query heads each block keeps: ``{key: indices}`` (blocks absent from it stay whole)."""
    if family.shared_position_bias and config.skip_layers:
        raise RecipeError("prune-heads: T5 layers share one relative-position bias per stack, so every layer "
                          "must keep the same heads; remove skip_layers")
    scores = _shared_t5_scores(groups, scores) if family.shared_position_bias else scores
    if config.scope == "global" and not family.shared_position_bias:
        return _plan_global(groups, scores, ratio, original, config)
    plan = {}
    for group in groups:
        if config.skips(group.key):
            continue
        keep_heads = _kept_count(group, ratio, original[group.key], config)
        if keep_heads < group.num_heads:
            plan[group.key] = _top_units(group, scores[group.key], keep_heads // group.group_size)
    return plan


def _kept_count(group: HeadGroup, ratio: float, original: int, config: PruneHeads) -> int:
    g = group.group_size
    units = original // g
    removed = round(ratio * units)
    if ratio > 0 and removed == 0 and g > 1:
        raise RecipeError(
            f"prune-heads: ratio {ratio:g} removes no whole KV group in {group.key} ({units} groups of {g} query "
            f"heads; grouped-query attention loses whole groups): use ratio >= {0.5 / units:.2f}")
    keep = (units - removed) * g
    if config.round_to > 1:
        keep = min(original, max(config.round_to, config.round_to * round(keep / config.round_to)))
        if keep % g:
            raise RecipeError(f"prune-heads: round_to {config.round_to} gives {keep} heads in {group.key}, not a "
                              f"multiple of its KV group size {g}; use a round_to that is a multiple of {g}")
    if keep < max(config.min_heads, 1):
        raise RecipeError(
            f"prune-heads: ratio {ratio:g} would leave {keep} of {original} heads in {group.key} (min_heads "
            f"{config.min_heads}); use ratio <= {1 - max(config.min_heads, g) / original:.2f} or skip_layers")
    return min(keep, group.num_heads)


def _top_units(group: HeadGroup, score: torch.Tensor, keep_units: int) -> torch.Tensor:
    g = group.group_size
    unit_scores = score.reshape(-1, g).sum(1)
    units = unit_scores.topk(keep_units).indices.sort().values
    return (units[:, None] * g + torch.arange(g)[None, :]).reshape(-1)


def _shared_t5_scores(groups: list[HeadGroup], scores: dict) -> dict:
    """T5: every self-attention of a stack shares one relative-position bias, so they share one ranking."""
    shared = dict(scores)
    for stack in ("encoder", "decoder"):
        keys = [g.key for g in groups if g.key.startswith(stack + ".") and not g.key.endswith(".cross")]
        if keys:
            total = sum(scores[k] / scores[k].sum().clamp(min=1e-12) for k in keys)
            shared.update({k: total for k in keys})
    return shared


def _plan_global(groups: list[HeadGroup], scores: dict, ratio: float, original: dict,
                 config: PruneHeads) -> dict[str, torch.Tensor]:
    """Rank KV units (heads or groups) across layers, normalised by each layer's mean score."""
    candidates, keep = [], {}
    for group in groups:
        if config.skips(group.key):
            continue
        unit_scores = scores[group.key].reshape(-1, group.group_size).sum(1)
        unit_scores = unit_scores / unit_scores.mean().clamp(min=1e-12)
        keep[group.key] = set(range(len(unit_scores)))
        candidates += [(float(s), group.key, u) for u, s in enumerate(unit_scores)]
    by_key = {g.key: g for g in groups}
    target = round(ratio * sum(original[k] // by_key[k].group_size for k in keep))
    removed = sum(original[k] // by_key[k].group_size - len(keep[k]) for k in keep)
    for _, key, unit in sorted(candidates):
        group = by_key[key]
        floor = max(config.min_heads, config.round_to)
        if removed >= target or (len(keep[key]) - 1) * group.group_size < floor:
            continue
        keep[key].discard(unit)
        removed += 1
    plan = {}
    for key, units in keep.items():
        group = by_key[key]
        count = min(group.num_heads, math.ceil(len(units) * group.group_size / config.round_to) * config.round_to)
        ranked = scores[key].reshape(-1, group.group_size).sum(1)
        extra = [u for u in ranked.argsort(descending=True).tolist() if u not in units]
        units |= set(extra[:count // group.group_size - len(units)])
        if len(units) * group.group_size < group.num_heads:
            chosen = torch.tensor(sorted(units))
            plan[key] = (chosen[:, None] * group.group_size + torch.arange(group.group_size)[None, :]).reshape(-1)
    return plan


@register_pass(PruneHeads, restore=restore_layout)
def apply_prune_heads(model: torch.nn.Module, config: PruneHeads, ctx: PassContext) -> torch.nn.Module:
    """Score heads on ``ctx.calib``, remove the lowest, keep the HF config true (see module docstring)."""
    return run_structured(model, config, ctx, "heads", head_groups, plan_heads, remove_heads)
