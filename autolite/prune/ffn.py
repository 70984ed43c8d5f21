"""The ``prune-ffn`` pass: physically remove the least important FFN intermediate neurons.

Up (and gate) rows and down columns go together (GLM's fused ``gate_up`` loses both halves' rows).
With ``scope: per_layer`` every layer keeps the same number, which the HF config's intermediate size
can say, so the saved model loads with plain ``transformers``.
"""
from __future__ import annotations

import dataclasses

import torch

from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.prune.base import StructuredPrune, run_structured
from autolite.prune.structure import NeuronGroup, neuron_groups
from autolite.prune.surgery import remove_neurons, restore_layout


@dataclasses.dataclass
class PruneFFN(StructuredPrune, PassConfig):
    """Remove ``ratio`` of every FFN's intermediate neurons, ranked by ``importance``.

    ``round_to``: kept neurons per layer are a multiple of it (e.g. 64 keeps GEMMs aligned);
    ``scope``, ``skip_layers``, ``iterations`` and ``recover_steps`` as in ``prune-heads``.
    """

    name = "prune-ffn"

    def __post_init__(self) -> None:
        self.validate()
        if self.importance in ("attention", "ablation"):
            raise RecipeError(f"prune-ffn: importance '{self.importance}' scores heads only; "
                              "use taylor, head_mask, wanda, magnitude or l2")


def plan_ffn(groups: list[NeuronGroup], scores: dict, ratio: float, original: dict, config: PruneFFN,
             family) -> dict[str, torch.Tensor]:
    """Which neurons each FFN keeps: ``{key: indices}``."""
    live = [g for g in groups if not config.skips(g.key)]
    if config.scope == "global":
        counts = _global_counts(live, scores, ratio, original)
    else:
        counts = {g.key: original[g.key] - round(ratio * original[g.key]) for g in live}
    plan = {}
    for group in live:
        keep = counts[group.key]
        if config.round_to > 1:
            keep = min(group.size, max(config.round_to, config.round_to * round(keep / config.round_to)))
        if keep < 1:
            raise RecipeError(f"prune-ffn: ratio {ratio:g} would remove every neuron of {group.key}; lower it")
        if keep < group.size:
            plan[group.key] = scores[group.key].topk(keep).indices.sort().values
    return plan


def _global_counts(groups: list[NeuronGroup], scores: dict, ratio: float, original: dict) -> dict[str, int]:
    """Kept neurons per layer when ranking across layers (scores normalised by each layer's mean)."""
    pooled = torch.cat([scores[g.key] / scores[g.key].mean().clamp(min=1e-12) for g in groups])
    total = sum(original[g.key] for g in groups)
    remove = round(ratio * total) - (total - sum(g.size for g in groups))
    if remove <= 0:
        return {g.key: g.size for g in groups}
    threshold = pooled.kthvalue(min(remove, len(pooled))).values
    counts = {}
    for group in groups:
        normalised = scores[group.key] / scores[group.key].mean().clamp(min=1e-12)
        counts[group.key] = max(1, int((normalised > threshold).sum()))
    return counts


@register_pass(PruneFFN, restore=restore_layout)
def apply_prune_ffn(model: torch.nn.Module, config: PruneFFN, ctx: PassContext) -> torch.nn.Module:
    """Score neurons on ``ctx.calib``, remove the lowest, keep the HF config true."""
    return run_structured(model, config, ctx, "ffn", neuron_groups, plan_ffn, remove_neurons)
