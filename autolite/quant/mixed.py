"""Sensitivity-driven mixed precision: pick bits per layer under an average bits-per-weight budget.

Cost model: a ``b``-bit group-wise weight costs ``b + (scale_bits + zero_bits) / group`` bits per weight
(FP16 scales, no zero points for symmetric quantization), so ``w4g64`` is 4.25 and ``w4g32`` 4.5.
Allocation: a greedy multiple-choice knapsack: start every unit at its cheapest width, then repeatedly
take the upgrade (to any wider width) with the largest estimated-loss reduction per extra bit that still
fits; the budget is met exactly or under.

The ``mixed_precision`` pass applies a bits map (or computes one from a budget on the calibration texts).
With ``engine`` (default) 4-bit layers become the engine's packed INT4 modules (``weight_only``) and 8-bit
layers its per-channel INT8 modules (real low-bit storage, low-bit kernels for small calls); widths the
engine has no kernel for (2, 3, 6) are fake-quantized in place (simulated: the weights stay float).
"""
from __future__ import annotations

import dataclasses
import logging
import re

import torch

from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant.qat import fake_quantize_weight, set_weight_matrix, transformer_linears, weight_matrix

log = logging.getLogger(__name__)
SCALE_BITS = 16


def bits_per_weight(bits: int, group_size: int, scale_bits: int = SCALE_BITS, zero_bits: int = 0) -> float:
    """Storage bits per weight of ``bits``-bit codes with one scale (and zero) per ``group_size`` weights."""
    return bits + (scale_bits + zero_bits) / group_size if bits < 16 else float(bits)


def average_bits(plan: dict[str, int], numel: dict[str, int], group_size: int) -> float:
    """Weight-count-weighted average bits per weight of ``plan`` (overhead included)."""
    total = sum(numel[u] for u in plan)
    return sum(numel[u] * bits_per_weight(b, group_size) for u, b in plan.items()) / total


def allocate_bits(loss: dict[str, dict[int, float]], numel: dict[str, int], budget: float,
                  group_size: int = 64, candidates: list[int] | None = None) -> dict[str, int]:
    """Bits per unit minimising the summed estimated ``loss[unit][bits]`` with average bpw <= ``budget``."""
    units = list(loss)
    if not units:
        raise RecipeError("nothing to allocate: no layers with sensitivity values")
    options = {u: sorted(b for b in loss[u] if candidates is None or b in candidates) for u in units}
    if any(not opts for opts in options.values()):
        raise RecipeError(f"no candidate bit widths {candidates} were measured")
    cost = lambda u, b: numel[u] * bits_per_weight(b, group_size)  # noqa: E731
    capacity = budget * sum(numel[u] for u in units)
    plan = {u: options[u][0] for u in units}
    spent = sum(cost(u, b) for u, b in plan.items())
    if spent > capacity * (1 + 1e-12):
        lowest = average_bits(plan, numel, group_size)
        raise RecipeError(f"budget {budget} bits/weight cannot be met: the cheapest allocation needs {lowest:.3f} "
                          f"(with group {group_size} scales); raise the budget or allow fewer bits")
    while True:
        best = None
        for u in units:
            for b in options[u]:
                extra = cost(u, b) - cost(u, plan[u])
                gain = loss[u][plan[u]] - loss[u][b]
                if extra <= 0 or gain <= 0 or spent + extra > capacity * (1 + 1e-12):
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, u, b, extra)
        if best is None:
            return plan
        _, u, b, extra = best
        plan[u] = b
        spent += extra


def expand_units(plan: dict[str, int], members: dict[str, list[str]]) -> dict[str, int]:
    """Unit plan -> per-linear plan (a layer unit gives its width to all of its linears)."""
    return {name: bits for unit, bits in plan.items() for name in members.get(unit, [unit])}


@dataclasses.dataclass
class MixedPrecision(PassConfig):
    """Weight-only mixed precision: ``bits`` maps linear names (or regexes) to widths; when it is empty,
    ``avg_bits`` (a budget in bits per weight, scales counted) is allocated from a sensitivity analysis on
    the calibration texts and the resulting map is recorded in the recipe."""

    name = "mixed_precision"
    bits: dict[str, int] = dataclasses.field(default_factory=dict)
    avg_bits: float | None = None
    group_size: int = 64
    candidates: list[int] = dataclasses.field(default_factory=lambda: [2, 3, 4, 6, 8])
    granularity: str = "linear"
    estimator: str = "measured"
    sensitivity_texts: int = 16
    engine: bool = True

    def __post_init__(self) -> None:
        if not self.bits and self.avg_bits is None:
            raise RecipeError("mixed_precision needs a 'bits' map or an 'avg_bits' budget")
        bad = {k: v for k, v in self.bits.items() if not isinstance(v, int) or not 2 <= v <= 16}
        if bad or any(not 2 <= b <= 8 for b in self.candidates):
            raise RecipeError("mixed_precision bits must be integers 2..8 (16 = keep float); "
                              f"got {bad or self.candidates}")
        if self.group_size < 0 or self.granularity not in ("linear", "layer"):
            raise RecipeError("mixed_precision group_size must be >= 0 and granularity 'linear' or 'layer'")
        if self.estimator not in ("measured", "fisher"):
            raise RecipeError(f"mixed_precision estimator must be 'measured' or 'fisher', got '{self.estimator}'")
        if self.avg_bits is not None and self.avg_bits <= 0:
            raise RecipeError("mixed_precision avg_bits must be positive")


def resolve_bits(model: torch.nn.Module, family, config: MixedPrecision) -> dict[str, int]:
    """The per-linear plan of ``config.bits``: exact names first, else the first regex that matches."""
    plan = {}
    for name in transformer_linears(model, family):
        if name in config.bits:
            plan[name] = config.bits[name]
            continue
        for pattern, bits in config.bits.items():
            if re.fullmatch(pattern, name):
                plan[name] = bits
                break
    return plan


def plan_from_budget(model: torch.nn.Module, config: MixedPrecision, ctx: PassContext) -> dict[str, int]:
    from autolite.quant.sensitivity import analyze

    if not ctx.calib or ctx.tokenizer is None:
        raise RecipeError("mixed_precision with avg_bits needs calibration texts and a tokenizer")
    table = analyze(model, ctx.tokenizer, ctx.family, ctx.calib, bits=tuple(config.candidates),
                    group_size=config.group_size, granularity=config.granularity,
                    max_texts=config.sensitivity_texts, gradient=config.estimator == "fisher",
                    measured=config.estimator == "measured")
    losses = table.measured if config.estimator == "measured" else table.estimated
    plan = allocate_bits(losses, table.numel, config.avg_bits, config.group_size)
    texts = min(len(ctx.calib), config.sensitivity_texts)
    ctx.note(f"mixed_precision: {config.estimator} sensitivity on {texts} texts -> "
             f"{average_bits(plan, table.numel, config.group_size):.3f} bits/weight (budget {config.avg_bits})")
    return expand_units(plan, table.members)


def _engine_module(module: torch.nn.Module, bits: int, group: int, empty: bool) -> torch.nn.Module | None:
    """The engine's packed module for a 4/8-bit layer (``empty``: shaped for loading), else None."""
    try:
        from autolite.quant import common, weight_only as wo
    except ImportError:
        return None
    in_features, out_features = common.linear_shape(module)
    has_bias = getattr(module, "bias", None) is not None
    if bits == 8:
        return (wo.WeightOnlyInt8Linear(in_features, out_features, has_bias) if empty
                else wo.WeightOnlyInt8Linear.from_float(module, kernel_max_rows=8))
    if bits == 4 and group in wo.GROUP_SIZES and in_features % group == 0:
        return (wo.WeightOnlyInt4Linear(in_features, out_features, has_bias, group) if empty
                else wo.WeightOnlyInt4Linear.from_float(module, group, True, kernel_max_rows=8))
    return None


def _swap_engine_layers(model: torch.nn.Module, config: MixedPrecision, plan: dict[str, int],
                        empty: bool) -> list[str]:
    from autolite.quant.qat import _set_module

    done = []
    modules = dict(model.named_modules())
    for name, bits in plan.items():
        layer = _engine_module(modules[name], bits, config.group_size, empty) if config.engine else None
        if layer is not None:
            _set_module(model, name, layer)
            done.append(name)
    return done


@register_pass(MixedPrecision, restore=lambda m, c, ctx: _restore(m, c, ctx))
def apply_mixed_precision(model: torch.nn.Module, config: MixedPrecision, ctx: PassContext) -> torch.nn.Module:
    if not config.bits:
        config.bits = plan_from_budget(model, config, ctx)  # recorded in the recipe: reload needs no analysis
    plan = resolve_bits(model, ctx.family, config)
    if not plan:
        raise RecipeError("mixed_precision bits map matches no linear of this model; check the layer names")
    packed = set(_swap_engine_layers(model, config, plan, empty=False))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, bits in plan.items():
            if name not in packed and bits < 16:
                w = weight_matrix(modules[name])
                set_weight_matrix(modules[name], fake_quantize_weight(w, bits, config.group_size))
    counts = {b: sum(1 for v in plan.values() if v == b) for b in sorted(set(plan.values()))}
    ctx.note(f"mixed_precision: widths {counts}; {len(packed)} linears stored packed by the weight-only engine "
             f"(INT4/INT8), {len(plan) - len(packed)} fake-quantized in place (float storage)")
    return model


def _restore(model: torch.nn.Module, config: MixedPrecision, ctx: PassContext) -> torch.nn.Module:
    from autolite.arch import family_of

    plan = resolve_bits(model, family_of(model), config)
    _swap_engine_layers(model, config, plan, empty=True)
    return model
