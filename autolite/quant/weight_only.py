"""Weight-only quantization: INT8 per channel or INT4 group-wise, stored packed, run by low-bit kernels.

Storage (safetensors, portable): INT8 ``weight_int8`` (out, in) + ``weight_scale`` (out,); INT4
``weight_packed`` (out, in/2) uint8 holding two 4-bit codes per byte (low nibble = even column) +
``weight_scale`` and integer ``weight_zero`` per (out, group): ``w = (q - zero) * scale``.

Execution: for calls of at most ``kernel_max_rows`` tokens (decoding) the weights stay packed and
torch's CPU kernels run (``aten._weight_int8pack_mm`` / ``aten._weight_int4pack_mm_for_cpu`` on BF16
activations; the INT4 kernel's tile layout is built from the portable form on first use). Larger calls
(prefill, batched encoders) dequantize the layer to the activation dtype and run a dense GEMM, which
the measured kernels beat only at a few rows; so do calls on non-CPU devices (the kernels are CPU ones).
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant import common
from autolite.quant.embedding import quantize_embeddings, restore_embeddings
from autolite.quant.formats import GROUP_SIZES, packed_group
from autolite.quant.gptq import gptq_linears
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from autolite.quant.sequential import sequential_quantize

log = logging.getLogger(__name__)

METHODS = ("rtn", "gptq")


@dataclasses.dataclass
class WeightOnly(PassConfig):
    """Weight-only quantization of every linear (output heads only with ``include_head``).

    ``bits`` 8 (per output channel, symmetric) or 4 (group-wise, ``group_size`` 32/64/128/256;
    a layer whose width the group does not divide uses the largest smaller group that does).
    ``method`` (4-bit): ``rtn`` round-to-nearest with a range search, or ``gptq``: calibrated on
    ``ctx.calib`` (the embedded corpus by default) block by block, ``calib_tokens`` tokens in windows of
    ``calib_seq``, Hessian damping ``damp``, columns by decreasing activation with ``act_order``
    (``autolite.quant.gptq``); both store the same packed format.
    ``embedding``: the input embedding and the output head as INT8 per row (one copy when tied).
    ``kernel_max_rows``: calls with at most this many tokens run the packed low-bit kernel.
    ``layers`` / ``embedding_layers``: what was quantized, recorded in the applied config copy (replayed on load).
    """

    name = "weight-only"
    bits: int = 4
    group_size: int | None = 64
    symmetric: bool = True
    include_head: bool = False
    kernel_max_rows: int = 8
    skip: list[str] = dataclasses.field(default_factory=list)
    layers: list[str] | None = None
    method: str = "rtn"
    damp: float = 0.01
    act_order: bool = True
    calib_tokens: int = 8192
    calib_seq: int = 128
    embedding: bool = False
    embedding_layers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise RecipeError(f"weight-only bits must be 4 or 8, got {self.bits!r}")
        if self.bits == 8 and (self.group_size is not None or not self.symmetric):
            raise RecipeError("weight-only 8-bit is symmetric per output channel (the INT8 kernel takes one "
                              "scale per channel); set group_size: null and symmetric: true")
        if self.bits == 4 and self.group_size not in GROUP_SIZES:
            raise RecipeError(f"weight-only 4-bit group_size must be one of {GROUP_SIZES}, got {self.group_size!r}")
        if not isinstance(self.kernel_max_rows, int) or self.kernel_max_rows < 0:
            raise RecipeError(f"kernel_max_rows must be an integer >= 0, got {self.kernel_max_rows!r}")
        if self.method not in METHODS:
            raise RecipeError(f"weight-only method must be one of {METHODS}, got {self.method!r}")
        if self.method == "gptq" and self.bits != 4:
            raise RecipeError("weight-only method gptq is for 4-bit weights (INT8 per channel needs no "
                              "calibration); use method: rtn with bits: 8")
        if not 0 < self.damp < 1:
            raise RecipeError(f"weight-only damp must be in (0, 1), got {self.damp!r}")
        for field in ("calib_tokens", "calib_seq"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise RecipeError(f"weight-only {field} must be a positive integer, got {getattr(self, field)!r}")
        common.validate_skip(self.skip)


def _group_for(name: str, in_features: int, config: WeightOnly, ctx: PassContext) -> int | None:
    group = packed_group(in_features, config.group_size)
    if group is None:
        ctx.note(f"weight-only: {name} kept in float (width {in_features} is not a multiple of "
                 f"{GROUP_SIZES[0]})")
    elif group != config.group_size:
        ctx.note(f"weight-only: {name} uses group {group} (width {in_features} is not a multiple of "
                 f"{config.group_size})")
    return group


def _quantized_layer(module: nn.Module, config: WeightOnly, ctx: PassContext, name: str) -> nn.Module | None:
    if config.bits == 8:
        return WeightOnlyInt8Linear.from_float(module, config.kernel_max_rows)
    group = _group_for(name, common.linear_shape(module)[0], config, ctx)
    if group is None:
        return None
    return WeightOnlyInt4Linear.from_float(module, group, config.symmetric, config.kernel_max_rows)


def _gptq_layers(linears: dict[str, nn.Module], hessian: torch.Tensor, owner: str, config: WeightOnly,
                 ctx: PassContext) -> dict[str, nn.Module]:
    """GPTQ of linears sharing one input at the configured group (kept float when no group divides)."""
    group = _group_for(owner, hessian.shape[0], config, ctx)
    if group is None:
        return {}
    return gptq_linears(linears, hessian, group, config.symmetric, damp=config.damp, act_order=config.act_order,
                        kernel_max_rows=config.kernel_max_rows, name=owner)


def _quantize_linears(model: nn.Module, targets: dict[str, nn.Module], config: WeightOnly,
                      ctx: PassContext) -> list[str]:
    done: set[str] = set()
    if config.method == "gptq":
        done = sequential_quantize(
            model, ctx.family, ctx.tokenizer, ctx.calib, targets,
            lambda linears, hessian, owner: _gptq_layers(linears, hessian, owner, config, ctx),
            seq_len=config.calib_seq, max_tokens=config.calib_tokens)
        done &= {n for n in targets if not common.is_linear(model.get_submodule(n))}
        rest = [n for n in targets if n not in done]
        if rest:
            ctx.note(f"weight-only gptq: {len(rest)} linears outside the transformer blocks use rtn ({rest[:3]})")
    for name, module in targets.items():
        if name in done:
            continue
        layer = _quantized_layer(module, config, ctx, name)
        if layer is not None:
            common.set_module(model, name, layer)
            done.add(name)
    return sorted(done)


def apply_weight_only(model: nn.Module, config: WeightOnly, ctx: PassContext) -> nn.Module:
    if config.layers is not None:
        common.check_layers_exist(model, config.layers)
    embedding_layers = quantize_embeddings(model, config.kernel_max_rows) if config.embedding else None
    targets = dict(common.target_linears(model, include_head=config.include_head, skip=config.skip,
                                         layers=config.layers))
    layers = _quantize_linears(model, targets, config, ctx)
    config = dataclasses.replace(config, layers=layers, embedding_layers=embedding_layers)  # recorded for load
    kernel = "_weight_int8pack_mm" if config.bits == 8 else "_weight_int4pack_mm_for_cpu"
    method = f", {config.method}" if config.bits == 4 else ""
    ctx.note(f"weight-only: {len(config.layers)} linear layers stored as INT{config.bits}{method} "
             f"(aten.{kernel} for <= {config.kernel_max_rows} tokens per call, dequantized GEMM above)")
    if config.embedding and not config.embedding_layers:
        ctx.note("weight-only: embedding kept float (not a single nn.Embedding: absent, or shared by several "
                 "modules such as T5's encoder and decoder)")
    if config.embedding_layers:
        ctx.note(f"weight-only: INT8 per-row {', '.join(f'{n} ({k})' for n, k in config.embedding_layers.items())}"
                 " (lookup gathers INT8 rows; head runs aten._weight_int8pack_mm at decode)")
    return model, config


def restore_weight_only(model: nn.Module, config: WeightOnly, ctx: PassContext) -> nn.Module:
    """Swap in empty packed layers of the recorded shapes (contents come from the state dict)."""
    def build(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        if config.bits == 8:
            return WeightOnlyInt8Linear(in_features, out_features, bias, config.kernel_max_rows)
        group = packed_group(in_features, config.group_size)
        return WeightOnlyInt4Linear(in_features, out_features, bias, group, config.kernel_max_rows)

    common.restore_linears(model, config.layers, build)
    if config.embedding_layers:
        restore_embeddings(model, config.embedding_layers, config.kernel_max_rows)
    return model


register_pass(WeightOnly, restore=restore_weight_only)(apply_weight_only)
