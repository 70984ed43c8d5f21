"""INT8 dynamic quantization: INT8 per-channel weights, activations quantized at run time.

The pass swaps in ``layers.DynamicInt8Linear``. Kernels (measured per layer shape at apply time, the fastest
kept; ``kernel`` forces one):

* ``onednn`` / ``x86`` / ``fbgemm``: ``torch.ops.quantized.linear_dynamic`` on a weight prepacked for
  that engine (activations quantized per tensor inside the kernel; VNNI/AMX when the CPU has them).
* ``int_mm``: activations quantized per token, ``torch._int_mm`` (INT8 x INT8 -> INT32), rescaled by
  token scale x channel scale.

A layer whose best INT8 kernel is slower than FP32 at the measured shape stays FP32 (noted), unless
``fallback=False``. Saved state: ``weight_int8`` (out, in) int8, ``weight_scale`` (out,) fp32, ``bias``
and ``kernel`` (the chosen kernel's code), so ``autolite.load`` rebuilds the same layers bit for bit.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import nn

from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant import common
from autolite.quant.layers import ENGINE_KERNELS, KERNELS, DynamicInt8Linear

log = logging.getLogger(__name__)
def available_kernels() -> list[str]:
    """INT8 dynamic kernels this torch build offers."""
    engines = set(torch.backends.quantized.supported_engines)
    found = [k for k in ENGINE_KERNELS if k in engines]
    if hasattr(torch, "_int_mm"):
        found.append("int_mm")
    return found


@dataclasses.dataclass
class Int8Dynamic(PassConfig):
    """INT8 dynamic quantization of every linear (output heads only with ``include_head``).

    ``kernel``: "auto" (measure each layer shape at ``rows`` tokens, keep the fastest) or one of
    :data:`KERNELS`; ``activations``: "per-token" (only ``int_mm``), "per-tensor" (any kernel) or "auto" =
    per-token for decoders and seq2seq models, whose activation outliers a per-tensor scale destroys
    (SmolLM2-135M: +97% perplexity per tensor, +7.8% per token), any kernel for encoders; ``fallback``: keep a
    layer FP32 when INT8 is slower there; ``skip``: regexes of layer names to leave alone; ``layers``: the
    layers actually quantized (recorded in the applied copy of the config; given, load rebuilds exactly these).
    """

    name = "int8-dynamic"
    kernel: str = "auto"
    activations: str = "auto"
    include_head: bool = False
    fallback: bool = True
    rows: int = 256
    skip: list[str] = dataclasses.field(default_factory=list)
    layers: list[str] | None = None

    def __post_init__(self) -> None:
        if self.kernel not in ("auto", *KERNELS):
            raise RecipeError(f"int8-dynamic kernel must be 'auto' or one of {KERNELS}, got '{self.kernel}'")
        if self.activations not in ("auto", "per-token", "per-tensor"):
            raise RecipeError(f"int8-dynamic activations must be auto, per-token or per-tensor, got "
                              f"'{self.activations}'")
        if not isinstance(self.rows, int) or self.rows < 1:
            raise RecipeError(f"int8-dynamic rows must be a positive integer, got {self.rows!r}")
        common.validate_skip(self.skip)


def _per_token(config: Int8Dynamic, family) -> bool:
    if config.activations == "auto":
        return getattr(family, "kind", "encoder") != "encoder"
    return config.activations == "per-token"


def _candidates(config: Int8Dynamic, family=None) -> list[str]:
    available = available_kernels()
    if config.kernel == "auto" and _per_token(config, family):
        available = [k for k in available if k == "int_mm"]
    if config.kernel == "auto":
        if not available:
            raise BackendUnavailableError("this torch build has no INT8 kernel (no quantized engine, no _int_mm)")
        return available
    if config.kernel not in available:
        raise BackendUnavailableError(f"INT8 kernel '{config.kernel}' is not available in this torch build "
                                      f"(available: {available}); use kernel: auto")
    return [config.kernel]


def choose_kernel(module: nn.Module, candidates: list[str], rows: int) -> tuple[str | None, dict[str, float]]:
    """Time each candidate (and FP32) on ``rows`` random tokens; returns (fastest INT8, all timings)."""
    in_features, _ = common.linear_shape(module)
    x = torch.randn(rows, in_features)
    weight, bias = common.linear_weight(module), common.linear_bias(module)
    timings = {"fp32": common.time_ms(lambda: F.linear(x, weight, bias))}
    for kernel in candidates:
        layer = DynamicInt8Linear.from_float(module, kernel)
        layer.prepack()
        timings[kernel] = common.time_ms(lambda: layer(x))
    best = min(candidates, key=timings.__getitem__) if candidates else None
    return best, timings


def _plan(model: nn.Module, config: Int8Dynamic, ctx: PassContext) -> dict[str, str]:
    """fqn -> kernel for every layer to quantize (measured once per distinct shape)."""
    candidates = _candidates(config, ctx.family)
    if config.kernel == "auto" and _per_token(config, ctx.family):
        ctx.note("int8-dynamic: activations quantized per token (int_mm kernel only): the per-tensor "
                 "quantized-engine kernels lose too much on decoder activation outliers")
    by_shape: dict[tuple, str | None] = {}
    plan: dict[str, str] = {}
    for name, module in common.target_linears(model, include_head=config.include_head, skip=config.skip,
                                              layers=config.layers):
        shape = common.shape_key(module)
        if shape not in by_shape:
            best, timings = choose_kernel(module, candidates, config.rows)
            slower = timings[best] > timings["fp32"]
            shown = ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items())
            if slower and config.fallback:
                ctx.note(f"int8-dynamic: {shape[0]}x{shape[1]} layers stay FP32 (INT8 slower at {config.rows} "
                         f"tokens: {shown})")
                best = None
            else:
                ctx.note(f"int8-dynamic: {shape[0]}x{shape[1]} layers use kernel {best} ({shown})")
            by_shape[shape] = best
        if by_shape[shape] is not None:
            plan[name] = by_shape[shape]
    return plan


def apply_int8_dynamic(model: nn.Module, config: Int8Dynamic, ctx: PassContext) -> nn.Module:
    if config.layers is not None:
        common.check_layers_exist(model, config.layers)
    plan = _plan(model, config, ctx)
    for name, kernel in plan.items():
        common.set_module(model, name, DynamicInt8Linear.from_float(model.get_submodule(name), kernel))
    ctx.note(f"int8-dynamic: {len(plan)} linear layers quantized to INT8")
    return model, dataclasses.replace(config, layers=sorted(plan))  # recorded: load rebuilds exactly these


def restore_int8_dynamic(model: nn.Module, config: Int8Dynamic, ctx: PassContext) -> nn.Module:
    """Swap in empty INT8 layers (weights, scales and kernel choice come from the state dict)."""
    return common.restore_linears(model, config.layers,
                                  lambda name, in_f, out_f, bias: DynamicInt8Linear(in_f, out_f, bias))


register_pass(Int8Dynamic, restore=restore_int8_dynamic)(apply_int8_dynamic)
