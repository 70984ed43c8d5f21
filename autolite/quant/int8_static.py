"""INT8 static quantization: activation scales fixed by calibration, INT8 x INT8 GEMM at run time.

Each linear keeps INT8 per-channel weights and one activation scale chosen by an observer
(``autolite.quant.calibrate``) on the calibration texts. Optional SmoothQuant scale migration
(``smoothquant: alpha``) divides each input channel by ``s_j = max|X_j|^a / max|W_j|^(1-a)`` and multiplies
the weight column by it, moving activation outliers into the weights before both are quantized.
The forward quantizes with the fixed scale (no reduction pass) and runs ``torch._int_mm``.
Per-layer error (SQNR of the layer's output vs FP32 on calibration rows) goes into the notes.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant import common
from autolite.quant.calibrate import OBSERVERS, ActivationStats, clip_value, collect
from autolite.quant.layers import StaticInt8Linear

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Int8Static(PassConfig):
    """INT8 static quantization calibrated on ``ctx.calib`` (the embedded corpus by default on the CLI).

    ``observer``: minmax | percentile | mse, or auto (per layer, the one with the best output SQNR on
    calibration rows); ``percentile`` for the percentile observer; ``smoothquant``: the migration strength
    alpha in [0, 1] (None = off); ``min_sqnr``: layers whose output SQNR (dB) stays below it are kept FP32;
    ``max_texts``: calibration texts used; ``fallback``: keep a layer shape FP32 when the INT8 layer is
    slower than the FP32 linear at ``rows`` tokens (measured once per shape, said in the notes).
    """

    name = "int8-static"
    observer: str = "auto"
    percentile: float = 99.99
    smoothquant: float | None = None
    min_sqnr: float | None = None
    max_texts: int = 64
    include_head: bool = False
    fallback: bool = True
    rows: int = 256
    skip: list[str] = dataclasses.field(default_factory=list)
    layers: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rows, int) or self.rows < 1:
            raise RecipeError(f"int8-static rows must be a positive integer, got {self.rows!r}")
        if self.observer not in (*OBSERVERS, "auto"):
            raise RecipeError(f"int8-static observer must be 'auto' or one of {OBSERVERS}, got '{self.observer}'")
        if not 50.0 <= float(self.percentile) <= 100.0:
            raise RecipeError(f"int8-static percentile must be in [50, 100], got {self.percentile}")
        if self.smoothquant is not None and not 0.0 <= float(self.smoothquant) <= 1.0:
            raise RecipeError(f"smoothquant alpha must be in [0, 1] (or null), got {self.smoothquant}")
        if not isinstance(self.max_texts, int) or self.max_texts < 1:
            raise RecipeError(f"max_texts must be a positive integer, got {self.max_texts!r}")
        common.validate_skip(self.skip)


def smooth_factors(stats: ActivationStats, module: nn.Module, alpha: float) -> torch.Tensor:
    """SmoothQuant per-input-channel factors ``max|X_j|^alpha / max|W_j|^(1-alpha)``."""
    weight_max = common.linear_weight(module).abs().amax(dim=0).clamp(min=1e-5)
    act_max = stats.channel_absmax.clamp(min=1e-5)
    return (act_max.pow(alpha) / weight_max.pow(1.0 - alpha)).clamp(min=1e-5)


def _quantize_layer(module: nn.Module, stats: ActivationStats, config: Int8Static
                    ) -> tuple[StaticInt8Linear, float, str]:
    """The layer for the configured observer ("auto": the observer with the best output SQNR)."""
    smooth = smooth_factors(stats, module, config.smoothquant) if config.smoothquant is not None else None
    rows = stats.input_rows()
    with torch.no_grad():
        reference = torch.nn.functional.linear(rows, common.linear_weight(module), common.linear_bias(module))
        best = None
        for observer in (OBSERVERS if config.observer == "auto" else (config.observer,)):
            clip = clip_value(stats, observer, config.percentile, smooth)
            layer = StaticInt8Linear.from_float(module, clip, smooth)
            error = common.sqnr_db(reference, layer(rows))
            if best is None or error > best[1]:
                best = (layer, error, observer)
    return best


def _faster_than_fp32(targets: dict[str, nn.Module], rows: int, ctx: PassContext) -> dict[str, nn.Module]:
    """The targets whose shape runs faster as a static INT8 layer than as FP32 at ``rows`` tokens."""
    verdict: dict[tuple, bool] = {}
    for module in targets.values():
        shape = common.shape_key(module)
        if shape in verdict:
            continue
        x = torch.randn(rows, shape[0])
        weight, bias = common.linear_weight(module), common.linear_bias(module)
        layer = StaticInt8Linear.from_float(module, clip=float(x.abs().max()))
        fp32_ms = common.time_ms(lambda: torch.nn.functional.linear(x, weight, bias))
        int8_ms = common.time_ms(lambda: layer(x))
        verdict[shape] = int8_ms < fp32_ms
        if not verdict[shape]:
            ctx.note(f"int8-static: {shape[0]}x{shape[1]} layers stay FP32 (INT8 slower at {rows} tokens: "
                     f"fp32 {fp32_ms:.2f} ms, int8 {int8_ms:.2f} ms)")
    return {n: m for n, m in targets.items() if verdict[common.shape_key(m)]}


def apply_int8_static(model: nn.Module, config: Int8Static, ctx: PassContext) -> nn.Module:
    if not hasattr(torch, "_int_mm"):
        raise BackendUnavailableError("this torch build has no torch._int_mm; use int8-dynamic instead")
    if config.layers is not None:
        common.check_layers_exist(model, config.layers)
    targets = dict(common.target_linears(model, include_head=config.include_head, skip=config.skip,
                                         layers=config.layers))
    if config.layers is None and config.fallback:
        targets = _faster_than_fp32(targets, config.rows, ctx)
    stats = collect(model, ctx.family, ctx.tokenizer, ctx.calib, targets, max_texts=config.max_texts)
    errors, kept_float = {}, []
    for name, module in targets.items():
        layer, error, observer = _quantize_layer(module, stats[name], config)
        if config.layers is None and config.min_sqnr is not None and error < config.min_sqnr:
            kept_float.append(f"{name} ({error:.1f} dB)")
            continue
        errors[name] = (error, observer)
        common.set_module(model, name, layer)
    applied = dataclasses.replace(config, layers=sorted(errors))  # recorded: load rebuilds exactly these
    _report(applied, ctx, errors, kept_float)
    return model, applied


def _report(config: Int8Static, ctx: PassContext, errors: dict[str, tuple[float, str]], kept: list[str]) -> None:
    worst = sorted(errors.items(), key=lambda kv: kv[1][0])[:5]
    mean = sum(e for e, _ in errors.values()) / max(len(errors), 1)
    ctx.note(f"int8-static ({config.observer}, smoothquant={config.smoothquant}): {len(errors)} layers on "
             f"torch._int_mm, calibrated on {min(len(ctx.calib), config.max_texts)} texts; per-layer output "
             f"SQNR mean {mean:.1f} dB, worst: " + ", ".join(f"{n} {e:.1f} dB ({o})" for n, (e, o) in worst))
    if kept:
        ctx.note(f"int8-static: {len(kept)} layers kept FP32 (output SQNR below {config.min_sqnr} dB): "
                 + ", ".join(kept))


def restore_int8_static(model: nn.Module, config: Int8Static, ctx: PassContext) -> nn.Module:
    """Swap in empty static INT8 layers (contents come from the state dict)."""
    common.check_layers_exist(model, config.layers or [])
    for name in config.layers or []:
        module = model.get_submodule(name)
        in_features, out_features = common.linear_shape(module)
        layer = StaticInt8Linear(in_features, out_features, module.bias is not None, config.smoothquant is not None)
        common.set_module(model, name, layer)
    return model


register_pass(Int8Static, restore=restore_int8_static)(apply_int8_static)

