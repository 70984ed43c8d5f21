"""Sensitivity-driven mixed precision: pick bits per layer under an average bits-per-weight budget.

Formats: an integer width ``b`` (group ``group_size``), or an engine format name: ``w4g32`` / ``w4g64`` /
``w4g128`` / ``w4g256`` (packed INT4, BF16 scale + uint8 zero per group) or ``w8`` (INT8, one BF16 scale
per output channel). Cost model (:func:`format_bits`): what the file stores per weight, scales and zeros
counted: ``w4gG`` = 4 + 24/G (``w4g32`` 4.75, ``w4g64`` 4.375, ``w4g128`` 4.1875), ``w8`` = 8 + 16/in;
simulated widths ``b + 16/group``.
Allocation: a greedy multiple-choice knapsack: start every unit at its cheapest width, then repeatedly
take the upgrade (to any wider width) with the largest estimated-loss reduction per extra bit that still
fits; the budget is met exactly or under.

The ``mixed_precision`` pass applies a bits map (or computes one from a budget on the calibration texts).
With ``engine`` (default) 4-bit layers become the engine's packed INT4 modules (``weight_only``) and 8-bit
layers its per-channel INT8 modules (real low-bit storage, low-bit kernels for small calls); widths the
engine has no kernel for (2, 3, 6) are fake-quantized in place (simulated: the weights stay float).
``method: gptq`` rounds the INT4 layers by GPTQ, block by block on the calibration texts, through the same
machinery as ``weight-only`` (``autolite.quant.sequential`` + ``autolite.quant.gptq``), each linear at its
own planned group; INT8 layers join the same walk (per-channel round-to-nearest) so later blocks calibrate
on quantized outputs. ``embedding: true`` stores the token embedding (and tied head) as INT8 rows, as the
``w4g*`` presets do: a uniform map ``{".*": "w4g64"}`` with ``method: gptq, symmetric: false,
embedding: true`` is exactly the ``w4g64`` preset.
"""
from __future__ import annotations

import dataclasses
import logging
import re

import torch

from autolite.arch import family_of
from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant.common import linear_shape, set_module, set_weight_matrix, transformer_linears, weight_matrix
from autolite.quant.embedding import quantize_embeddings, restore_embeddings
from autolite.quant.fakequant import dequantized
from autolite.quant.formats import Format, bits_per_weight, engine_format, format_bits, parse_format
from autolite.quant.gptq import gptq_linears
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from autolite.quant.sensitivity import analyze, estimator_losses, estimator_options, sensitivity_units
from autolite.quant.sequential import sequential_quantize

log = logging.getLogger(__name__)
KERNEL_MAX_ROWS = 8  # calls of at most this many tokens run the packed low-bit kernels (as weight-only)


BitsTable = dict[str, dict[Format, float]]


def average_bits(plan: dict[str, Format], numel: dict[str, int], group_size: int,
                 bpw: BitsTable | None = None) -> float:
    """Weight-count-weighted average bits per weight of ``plan`` (overhead included); ``bpw[unit][fmt]``
    gives each unit's cost (default: ``bits_per_weight(bits, group_size)``, scales only)."""
    total = sum(numel[u] for u in plan)
    return sum(numel[u] * _unit_bits(u, b, group_size, bpw) for u, b in plan.items()) / total


def _unit_bits(unit: str, fmt: Format, group_size: int, bpw: BitsTable | None) -> float:
    if bpw is not None:
        return bpw[unit][fmt]
    bits, group = parse_format(fmt, group_size)
    return bits_per_weight(bits, group or group_size)


def allocate_bits(loss: dict[str, dict[Format, float]], numel: dict[str, int], budget: float,
                  group_size: int = 64, candidates: list[Format] | None = None,
                  bpw: BitsTable | None = None) -> dict[str, Format]:
    """Format per unit minimising the summed estimated ``loss[unit][fmt]`` with average bpw <= ``budget``."""
    units = list(loss)
    if not units:
        raise RecipeError("nothing to allocate: no layers with sensitivity values")
    cost = lambda u, b: numel[u] * _unit_bits(u, b, group_size, bpw)  # noqa: E731
    options = {u: sorted((b for b in loss[u] if candidates is None or b in candidates), key=lambda b: cost(u, b))
               for u in units}
    if any(not opts for opts in options.values()):
        raise RecipeError(f"no candidate formats {candidates} were measured")
    capacity = budget * sum(numel[u] for u in units)
    plan = {u: options[u][0] for u in units}
    spent = sum(cost(u, b) for u, b in plan.items())
    if spent > capacity * (1 + 1e-12):
        lowest = average_bits(plan, numel, group_size, bpw)
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


def expand_units(plan: dict[str, Format], members: dict[str, list[str]]) -> dict[str, Format]:
    """Unit plan -> per-linear plan (a layer unit gives its format to all of its linears)."""
    return {name: bits for unit, bits in plan.items() for name in members.get(unit, [unit])}


def unit_bits_table(model: torch.nn.Module, members: dict[str, list[str]], formats: list[Format],
                    group_size: int, engine: bool = True) -> BitsTable:
    """``bpw[unit][fmt]``: stored bits per weight of each unit in each format (weight-count weighted)."""
    modules = dict(model.named_modules())
    table: BitsTable = {}
    for unit, names in members.items():
        sizes = [(modules[n].weight.numel(), linear_shape(modules[n])[0]) for n in names]
        total = sum(n for n, _ in sizes)
        table[unit] = {f: sum(n * format_bits(f, fan_in, group_size, engine) for n, fan_in in sizes) / total
                       for f in formats}
    return table


def check_budget(model: torch.nn.Module, members: dict[str, list[str]], formats: list[Format], group_size: int,
                 budget: float, engine: bool = True) -> None:
    """Raise the allocator's error before any (slow) analysis when even the cheapest formats exceed ``budget``."""
    bpw = unit_bits_table(model, members, formats, group_size, engine)
    modules = dict(model.named_modules())
    numel = {u: sum(modules[n].weight.numel() for n in names) for u, names in members.items()}
    allocate_bits({u: {f: 0.0 for f in formats} for u in members}, numel, budget, group_size, bpw=bpw)


ESTIMATORS = ("output", "gptq", "measured", "fisher")


@dataclasses.dataclass
class MixedPrecision(PassConfig):
    """Weight-only mixed precision: ``bits`` maps linear names (or regexes) to formats (a width, or an
    engine format name: w8, w4g32, w4g64, w4g128); when it is empty, ``avg_bits`` (a budget in stored bits
    per weight, scales and zeros counted) is allocated over ``candidates`` from a sensitivity analysis on
    the calibration texts (``estimator``: ``output`` = output-space Fisher estimate of the KL change,
    ``gptq`` = the same with INT4 probes rounded by GPTQ, ``measured`` = measured per probe, ``fisher`` =
    weight-space Fisher) and the map is recorded.
    ``method``: ``rtn`` or ``gptq`` for the INT4 layers (``calib_tokens`` in windows of ``calib_seq``,
    damping ``damp``); ``symmetric``: INT4 ranges (the ``w4g*`` presets use false); ``embedding``: INT8
    per-row token embedding and tied head (``embedding_layers`` records what was stored)."""

    name = "mixed_precision"
    bits: dict[str, Format] = dataclasses.field(default_factory=dict)
    avg_bits: float | None = None
    group_size: int = 64
    candidates: list[Format] = dataclasses.field(default_factory=lambda: [2, 3, 4, 6, 8])
    granularity: str = "linear"
    estimator: str = "measured"
    sensitivity_texts: int = 16
    engine: bool = True
    method: str = "rtn"
    symmetric: bool = True
    damp: float = 0.01
    calib_tokens: int = 8192
    calib_seq: int = 128
    embedding: bool = False
    embedding_layers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.bits and self.avg_bits is None:
            raise RecipeError("mixed_precision needs a 'bits' map or an 'avg_bits' budget")
        widths = [parse_format(v, self.group_size)[0] for v in [*self.bits.values(), *self.candidates]]
        if any(not 2 <= b <= 16 for b in widths) or any(not 2 <= parse_format(c, 64)[0] <= 8
                                                         for c in self.candidates):
            raise RecipeError("mixed_precision bits must be integers 2..8 (16 = keep float) or formats like "
                              f"w4g64 / w8; got {self.bits or self.candidates}")
        if self.group_size < 0 or self.granularity not in ("linear", "layer"):
            raise RecipeError("mixed_precision group_size must be >= 0 and granularity 'linear' or 'layer'")
        if self.estimator not in ESTIMATORS:
            raise RecipeError(f"mixed_precision estimator must be one of {ESTIMATORS}, got '{self.estimator}'")
        if self.avg_bits is not None and self.avg_bits <= 0:
            raise RecipeError("mixed_precision avg_bits must be positive")
        if self.method not in ("rtn", "gptq") or (self.method == "gptq" and not self.engine):
            raise RecipeError(f"mixed_precision method must be 'rtn' or 'gptq' (gptq needs engine: true), "
                              f"got '{self.method}'")
        if not 0 < self.damp < 1 or min(self.calib_tokens, self.calib_seq) < 1:
            raise RecipeError("mixed_precision damp must be in (0, 1) and calib_tokens / calib_seq positive")


def resolve_bits(model: torch.nn.Module, family, config: MixedPrecision) -> dict[str, Format]:
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


def plan_from_budget(model: torch.nn.Module, config: MixedPrecision, ctx: PassContext) -> dict[str, Format]:
    """A per-linear plan meeting ``config.avg_bits`` from a sensitivity analysis on the calibration texts."""
    if not ctx.calib or ctx.tokenizer is None:
        raise RecipeError("mixed_precision with avg_bits needs calibration texts and a tokenizer")

    check_budget(model, sensitivity_units(model, ctx.family, config.granularity), list(config.candidates),
                 config.group_size, config.avg_bits, config.engine)
    table = analyze(model, ctx.tokenizer, ctx.family, ctx.calib, bits=tuple(config.candidates),
                    group_size=config.group_size, granularity=config.granularity,
                    max_texts=config.sensitivity_texts, engine=config.engine, symmetric=config.symmetric,
                    **estimator_options(config.estimator))
    losses = estimator_losses(table, config.estimator)
    bpw = unit_bits_table(model, table.members, list(config.candidates), config.group_size, config.engine)
    plan = allocate_bits(losses, table.numel, config.avg_bits, config.group_size, bpw=bpw)
    texts = min(len(ctx.calib), config.sensitivity_texts)
    ctx.note(f"mixed_precision: {config.estimator} sensitivity on {texts} texts -> "
             f"{average_bits(plan, table.numel, config.group_size, bpw):.4f} stored bits/weight, scales and "
             f"zeros counted (budget {config.avg_bits})")
    return expand_units(plan, table.members)


def _engine_module(module: torch.nn.Module, fmt: Format, group_size: int, empty: bool,
                   symmetric: bool = True) -> torch.nn.Module | None:
    """The engine's packed module (round-to-nearest) for a format it stores (``empty``: shaped for loading),
    else None."""
    in_features, out_features = linear_shape(module)
    real = engine_format(fmt, group_size, in_features)
    has_bias = getattr(module, "bias", None) is not None
    if real == (8, None):
        return (WeightOnlyInt8Linear(in_features, out_features, has_bias, KERNEL_MAX_ROWS) if empty
                else WeightOnlyInt8Linear.from_float(module, kernel_max_rows=KERNEL_MAX_ROWS))
    if real is not None:
        return (WeightOnlyInt4Linear(in_features, out_features, has_bias, real[1], KERNEL_MAX_ROWS) if empty
                else WeightOnlyInt4Linear.from_float(module, real[1], symmetric, KERNEL_MAX_ROWS))
    return None


def _swap_engine_layers(model: torch.nn.Module, config: MixedPrecision, plan: dict[str, Format],
                        empty: bool) -> list[str]:
    done = []
    modules = dict(model.named_modules())
    for name, fmt in plan.items():
        layer = (_engine_module(modules[name], fmt, config.group_size, empty, config.symmetric)
                 if config.engine else None)
        if layer is not None:
            set_module(model, name, layer)
            done.append(name)
    return done


def _engine_plan(model: torch.nn.Module, config: MixedPrecision, plan: dict[str, Format]) -> dict[str, Format]:
    """The part of ``plan`` the engine stores packed, in the model's module order (as ``weight-only``)."""
    if not config.engine:
        return {}
    return {n: plan[n] for n, m in model.named_modules() if n in plan
            and engine_format(plan[n], config.group_size, linear_shape(m)[0]) is not None}


def packed_layers(model: torch.nn.Module, config: MixedPrecision) -> set[str]:
    """Names of the linears a recorded mixed_precision pass rebuilds as packed engine modules on load."""
    return set(_engine_plan(model, config, resolve_bits(model, family_of(model), config)))


def _gptq_engine_layers(model: torch.nn.Module, config: MixedPrecision, plan: dict[str, Format],
                        ctx: PassContext) -> set[str]:
    """GPTQ, block by block, of the planned engine layers; linears sharing an input share its Hessian and
    are stacked per format (INT8 ones are rounded per channel). Returns the names swapped."""
    modules = dict(model.named_modules())

    def quantize(linears: dict[str, torch.nn.Module], hessian: torch.Tensor, owner: str) -> dict[str, torch.nn.Module]:
        by_group: dict[int | None, dict[str, torch.nn.Module]] = {}
        for name, module in linears.items():
            by_group.setdefault(engine_format(plan[name], config.group_size, hessian.shape[0])[1], {})[name] = module
        out = {n: _engine_module(m, plan[n], config.group_size, False) for n, m in by_group.pop(None, {}).items()}
        for group, members in by_group.items():  # groups from engine_format: each divides the width
            out.update(gptq_linears(members, hessian, group, config.symmetric, damp=config.damp, act_order=True,
                                    kernel_max_rows=KERNEL_MAX_ROWS, name=owner))
        return out

    done = sequential_quantize(model, ctx.family, ctx.tokenizer, ctx.calib, {n: modules[n] for n in plan}, quantize,
                               seq_len=config.calib_seq, max_tokens=config.calib_tokens, label="mixed GPTQ")
    if len(done) < len(plan):
        ctx.note(f"mixed_precision gptq: {len(plan) - len(done)} linears outside the transformer blocks use rtn")
    return done


@register_pass(MixedPrecision, restore=lambda m, c, ctx: _restore(m, c, ctx))
def apply_mixed_precision(model: torch.nn.Module, config: MixedPrecision, ctx: PassContext) -> torch.nn.Module:
    if not config.bits:  # the plan is recorded in the recipe: reload needs no analysis
        config = dataclasses.replace(config, bits=plan_from_budget(model, config, ctx))
    plan = resolve_bits(model, ctx.family, config)
    if not plan:
        raise RecipeError("mixed_precision bits map matches no linear of this model; check the layer names")
    engine_plan = _engine_plan(model, config, plan)
    modules = dict(model.named_modules())
    for name, fmt in plan.items():  # widths without an engine module: fake-quantized in place
        if name not in engine_plan and parse_format(fmt, config.group_size)[0] < 16:
            w = weight_matrix(modules[name])
            set_weight_matrix(modules[name], dequantized(w, fmt, config.group_size, engine=False))
    if config.embedding:
        config = dataclasses.replace(config, embedding_layers=quantize_embeddings(model, KERNEL_MAX_ROWS))
    packed = _gptq_engine_layers(model, config, engine_plan, ctx) if config.method == "gptq" else set()
    packed |= set(_swap_engine_layers(model, config, {n: f for n, f in engine_plan.items() if n not in packed},
                                      empty=False))
    counts: dict[str, int] = {}
    for fmt in plan.values():
        counts[str(fmt)] = counts.get(str(fmt), 0) + 1
    ctx.note(f"mixed_precision ({config.method}): formats {dict(sorted(counts.items()))}; {len(packed)} linears "
             f"stored packed by the weight-only engine (INT4/INT8), {len(plan) - len(packed)} fake-quantized in "
             f"place (float storage){'; INT8 per-row embedding' if config.embedding_layers else ''}")
    return model, config


def _restore(model: torch.nn.Module, config: MixedPrecision, ctx: PassContext) -> torch.nn.Module:
    plan = resolve_bits(model, family_of(model), config)
    _swap_engine_layers(model, config, plan, empty=True)
    if config.embedding_layers:
        restore_embeddings(model, config.embedding_layers, KERNEL_MAX_ROWS)
    return model
