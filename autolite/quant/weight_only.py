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
import torch.nn.functional as F
from torch import nn

from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant import common
from autolite.quant.embedding import int8_rows_linear, quantize_rows, quantize_embeddings, restore_embeddings

log = logging.getLogger(__name__)
GROUP_SIZES = (32, 64, 128, 256)
SCALE_DTYPE = torch.bfloat16  # the CPU kernels read BF16 scales with BF16 activations


def effective_group(in_features: int, group_size: int) -> int | None:
    """The largest supported group <= ``group_size`` dividing ``in_features`` (None when none does)."""
    group = group_size
    while group >= GROUP_SIZES[0]:
        if in_features % group == 0:
            return group
        group //= 2
    return None


def _group_params(groups: torch.Tensor, symmetric: bool, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (BF16-rounded) and integer zero of each group for a range shrunk by ``shrink``."""
    if symmetric:
        scale = groups.abs().amax(-1) * shrink / 7.0
        zero = torch.full_like(scale, 8.0)
    else:
        low, high = groups.amin(-1).clamp(max=0) * shrink, groups.amax(-1).clamp(min=0) * shrink
        scale = (high - low) / 15.0
        zero = torch.round(-low / scale.clamp(min=1e-12)).clamp(0, 15)
    return scale.clamp(min=1e-8).to(SCALE_DTYPE).float(), zero


def _codes(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (torch.round(groups / scale[..., None]) + zero[..., None]).clamp(0, 15)


def search_group_params(groups: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``groups`` (out, ngroups, group): the scale (BF16-rounded, as float) and integer zero
    whose range, shrunk to 70-100% of min/max, gives the least squared weight error (outliers clipped
    when that lowers the error, as round-to-nearest refinements do)."""
    scale, zero = _group_params(groups, symmetric, 1.0)
    best = ((_codes(groups, scale, zero) - zero[..., None]) * scale[..., None] - groups).pow(2).sum(-1)
    for shrink in torch.linspace(0.70, 0.98, 15).tolist():
        s, z = _group_params(groups, symmetric, shrink)
        err = ((_codes(groups, s, z) - z[..., None]) * s[..., None] - groups).pow(2).sum(-1)
        better = err < best
        best = torch.where(better, err, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def quantize_int4(weight: torch.Tensor, group: int, symmetric: bool, search: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise 4-bit codes ``q`` in [0, 15] (out, in) uint8, ``scale`` and ``zero`` (out, in/group).

    Round-to-nearest; ``search`` picks each group's range with :func:`search_group_params`.
    """
    out_features, in_features = weight.shape
    groups = weight.reshape(out_features, in_features // group, group)
    scale, zero = search_group_params(groups, symmetric) if search else _group_params(groups, symmetric, 1.0)
    q = _codes(groups, scale, zero).to(torch.uint8).reshape(out_features, in_features)
    return q, scale.to(SCALE_DTYPE), zero.to(torch.uint8)


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(out, in)`` weights of INT4 codes ``q`` with per-group ``scale`` and ``zero`` ``(out, in / group)``,
    computed in ``dtype``."""
    groups = (q.to(dtype).view(q.shape[0], -1, group) - zero.to(dtype)[..., None]) * scale.to(dtype)[..., None]
    return groups.reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(out, in) codes in [0, 15] -> (out, in/2) uint8, even column in the low nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


class WeightOnlyInt8Linear(common.QuantizedLinearBase):
    """INT8 per-channel weights; ``aten._weight_int8pack_mm`` for small calls, INT8-weight GEMM above."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, kernel_max_rows: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kernel_max_rows = in_features, out_features, kernel_max_rows
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=SCALE_DTYPE))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, module: nn.Module, kernel_max_rows: int) -> "WeightOnlyInt8Linear":
        return common.from_float_linear(cls, module, quantize_rows, kernel_max_rows)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        common.realign_buffers(self, ("weight_int8", "weight_scale"))  # the INT8 kernel needs aligned tensors

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_rows_linear(x, self.weight_int8, self.weight_scale, self.bias, self.kernel_max_rows)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits=8, kernel_max_rows={self.kernel_max_rows}"


class WeightOnlyInt4Linear(common.QuantizedLinearBase):
    """Packed INT4 group-wise weights; ``aten._weight_int4pack_mm_for_cpu`` for small calls."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group: int = 64,
                 kernel_max_rows: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group, self.kernel_max_rows = group, kernel_max_rows
        groups = in_features // group
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=SCALE_DTYPE))
        self.register_buffer("weight_zero", torch.full((out_features, groups), 8, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernel_weight: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_float(cls, module: nn.Module, group: int, symmetric: bool, kernel_max_rows: int
                   ) -> "WeightOnlyInt4Linear":
        return cls.from_codes(module, group, kernel_max_rows,
                              *quantize_int4(common.linear_weight(module), group, symmetric))

    @classmethod
    def from_codes(cls, module: nn.Module, group: int, kernel_max_rows: int, q: torch.Tensor,
                   scale: torch.Tensor, zero: torch.Tensor) -> "WeightOnlyInt4Linear":
        """The packed layer replacing ``module`` from codes (out, in) in [0, 15], BF16 scales and zeros."""
        in_features, out_features = common.linear_shape(module)
        bias = common.linear_bias(module)
        layer = cls(in_features, out_features, bias is not None, group, kernel_max_rows)
        layer.weight_packed, layer.weight_scale, layer.weight_zero = pack_int4(q), scale, zero
        if bias is not None:
            layer.bias = bias
        return layer

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_kernel_weight"] = None
        return state

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._kernel_weight = None
        super()._load_from_state_dict(*args, **kwargs)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4(unpack_int4(self.weight_packed), self.weight_scale, self.weight_zero, self.group, dtype)

    def kernel_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The CPU kernel's tile-packed weight and its (groups, out, 2) scale/zero table (cached)."""
        if self._kernel_weight is None:
            q = unpack_int4(self.weight_packed).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            scale = self.weight_scale.float()
            # kernel: w = (q - 8) * scale + zero_k, so zero_k = (8 - zero) * scale
            zero_k = (8.0 - self.weight_zero.float()) * scale
            table = torch.stack((scale, zero_k), dim=-1).transpose(0, 1).contiguous().to(SCALE_DTYPE)
            self._kernel_weight = (packed, table)
        return self._kernel_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, lead = common.flatten_rows(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if rows.shape[0] <= self.kernel_max_rows and rows.device.type == "cpu":
            packed, table = self.kernel_weight()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(SCALE_DTYPE), packed, self.group, table)
            y = y.to(x.dtype) if bias is None else y.to(x.dtype) + bias
        else:
            y = F.linear(rows, self.dequantize(x.dtype), bias)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits=4, group={self.group}, "
                f"kernel_max_rows={self.kernel_max_rows}")


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
    ``layers`` / ``embedding_layers`` are filled in with what was quantized (replayed on load).
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
    group = effective_group(in_features, config.group_size)
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
    """GPTQ of linears sharing one input (stacked by rows, one Hessian), split back into packed layers."""
    from autolite.quant.gptq import gptq_quantize

    group = _group_for(owner, hessian.shape[0], config, ctx)
    if group is None:
        return {}
    weights = [common.linear_weight(m) for m in linears.values()]
    q, scale, zero = gptq_quantize(torch.cat(weights), hessian, group, config.symmetric, damp=config.damp,
                                   act_order=config.act_order, name=owner)
    out, start = {}, 0
    for (name, module), weight in zip(linears.items(), weights):
        rows = slice(start, start + weight.shape[0])
        out[name] = WeightOnlyInt4Linear.from_codes(module, group, config.kernel_max_rows, q[rows], scale[rows],
                                                    zero[rows])
        start += weight.shape[0]
    return out


def _quantize_linears(model: nn.Module, targets: dict[str, nn.Module], config: WeightOnly,
                      ctx: PassContext) -> list[str]:
    done: set[str] = set()
    if config.method == "gptq":
        from autolite.quant.sequential import sequential_quantize

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
    config.embedding_layers = quantize_embeddings(model, config.kernel_max_rows) if config.embedding else None
    targets = dict(common.target_linears(model, include_head=config.include_head, skip=config.skip,
                                         layers=config.layers))
    config.layers = _quantize_linears(model, targets, config, ctx)  # recorded: load rebuilds exactly these
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
    return model


def restore_weight_only(model: nn.Module, config: WeightOnly, ctx: PassContext) -> nn.Module:
    """Swap in empty packed layers of the recorded shapes (contents come from the state dict)."""
    def build(name: str, in_features: int, out_features: int, bias: bool) -> nn.Module:
        if config.bits == 8:
            return WeightOnlyInt8Linear(in_features, out_features, bias, config.kernel_max_rows)
        group = effective_group(in_features, config.group_size)
        return WeightOnlyInt4Linear(in_features, out_features, bias, group, config.kernel_max_rows)

    common.restore_linears(model, config.layers, build)
    if config.embedding_layers:
        restore_embeddings(model, config.embedding_layers, config.kernel_max_rows)
    return model


register_pass(WeightOnly, restore=restore_weight_only)(apply_weight_only)
