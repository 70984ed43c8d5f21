"""Fake quantization (quantize -> dequantize in float) for sensitivity analysis and QAT.

* ``fake_quantize_weight``: group-wise (or per-channel) symmetric/asymmetric quantize -> dequantize of a
  weight matrix ``(out, in)``; symmetric uses ``scale = max|w| / (2^(b-1) - 1)``,
  ``q = clamp(round(w/s), -2^(b-1), 2^(b-1) - 1)``; scales are rounded to BF16 as the engine stores them.
* ``dequantized``: a weight after round-to-nearest to a format exactly as the passes store it.
* ``FakeQuantLinear``: a Linear whose weight (and optionally its input activations, per token) pass through
  fake quantization with a straight-through estimator (STE). Weight ranges are recomputed each forward
  ("minmax"), tracked by an exponential moving average ("ema"), or learned (LSQ, "lsq").
"""
from __future__ import annotations

import torch
from torch import nn

from autolite.arch import is_conv1d
from autolite.errors import RecipeError
from autolite.quant.common import weight_matrix
from autolite.quant.formats import (SCALE_DTYPE, Format, dequantize_int4, effective_group, engine_format,
                                    parse_format, quant_range, quantize_int4, quantize_rows, search_group_params)

WEIGHT_MODES = ("minmax", "ema", "lsq")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def group_params(w: torch.Tensor, bits: int, group: int, symmetric: bool,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per group, ``(out, in/group)``; ``lo/hi`` override the observed min/max (EMA)."""
    wg = w.reshape(w.shape[0], -1, group)
    lo = wg.amin(-1) if lo is None else lo
    hi = wg.amax(-1) if hi is None else hi
    qmin, qmax = quant_range(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        zero = torch.zeros_like(scale)
    else:
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        scale = (hi - lo) / (qmax - qmin)
        zero = torch.round(-lo / scale.clamp(min=1e-12)).clamp(qmin, qmax)
    return to_scale_dtype(scale.clamp(min=1e-8)), zero


def search_scale(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric per-group scales minimising the squared weight error over ranges shrunk to 70-100% of
    max|w| (the engine's round-to-nearest range search, for any width); ``(out, in/group)``, BF16-rounded."""
    return search_group_params(w.detach().float().reshape(w.shape[0], -1, group), True, bits)[0]


def to_scale_dtype(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to BF16 (as stored by the weight-only kernels), straight-through for gradients."""
    return scale + (scale.to(SCALE_DTYPE).float() - scale).detach()


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool,
                    ste: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes, dequantized weight) of ``w`` ``(out, in)`` with per-group ``scale``/``zero``."""
    out_f, in_f = w.shape
    wg = w.reshape(out_f, scale.shape[1], -1)
    qmin, qmax = quant_range(bits, symmetric)
    rounder = round_ste if ste else torch.round
    q = torch.clamp(rounder(wg / scale.unsqueeze(-1)) + zero.unsqueeze(-1), qmin, qmax)
    deq = (q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
    return q.reshape(out_f, in_f), deq.reshape(out_f, in_f)


def fake_quantize_weight(w: torch.Tensor, bits: int, group_size: int | None = 64,
                         symmetric: bool = True) -> torch.Tensor:
    """Quantize-dequantize a ``(out, in)`` weight (no gradient tricks); returns a tensor like ``w``."""
    if bits >= 16:
        return w
    group = effective_group(w.shape[1], group_size)
    scale, zero = group_params(w.float(), bits, group, symmetric)
    return quantize_groups(w.float(), scale, zero, bits, symmetric)[1].to(w.dtype)


def fake_quantize_tokens(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token (last dim) dynamic fake quantization with STE."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
    return torch.clamp(round_ste(x / scale), -qmax - 1, qmax) * scale


class WeightFakeQuant(nn.Module):
    """Fake-quantizes an ``(out, in)`` weight; ``mode``: minmax, ema (moving-average ranges) or lsq (learned
    scale). ``init="search"`` starts LSQ scales at the error-minimising clipped range (symmetric only), so
    training starts from the engine's post-training quantization instead of plain min/max."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int | None = 64, symmetric: bool = True,
                 mode: str = "minmax", momentum: float = 0.9, init: str = "minmax",
                 scale_init: torch.Tensor | None = None, zero_init: torch.Tensor | None = None) -> None:
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise RecipeError(f"weight fake-quant mode must be one of {WEIGHT_MODES}, got '{mode}'")
        if not 2 <= bits <= 8:
            raise RecipeError(f"QAT bits must be 2..8, got {bits}")
        self.bits, self.symmetric, self.mode, self.momentum = bits, symmetric, mode, momentum
        self.group = effective_group(weight.shape[1], group_size)
        wg = weight.detach().float().reshape(weight.shape[0], -1, self.group)
        self.register_buffer("range_lo", wg.amin(-1).clone())
        self.register_buffer("range_hi", wg.amax(-1).clone())
        if init not in ("minmax", "search"):
            raise RecipeError(f"QAT scale init must be 'minmax' or 'search', got '{init}'")
        if scale_init is not None and mode != "lsq":
            raise RecipeError("QAT from given scales (init gptq) needs mode 'lsq' (learned scales)")
        if scale_init is not None:
            scale = scale_init.detach().float().clone()
        elif init == "search" and symmetric:
            scale = search_scale(weight, bits, self.group)
        else:
            scale, _ = group_params(weight.detach().float(), bits, self.group, symmetric)
        self.scale = nn.Parameter(scale) if mode == "lsq" else None
        self.register_buffer("zero_point", None if zero_init is None else zero_init.detach().float().clone())

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) to use now (updating the EMA ranges in training)."""
        if self.mode == "lsq":
            qmax = quant_range(self.bits, self.symmetric)[1]
            grad_scale = 1.0 / (self.group * qmax) ** 0.5  # LSQ gradient scaling
            scale = (self.scale - self.scale * grad_scale).detach() + self.scale * grad_scale
            zero = torch.zeros_like(scale) if self.zero_point is None else self.zero_point
            return to_scale_dtype(scale.abs().clamp(min=1e-8)), zero
        if self.mode == "ema":
            if self.training:
                wg = w.detach().reshape(w.shape[0], -1, self.group)
                self.range_lo.mul_(self.momentum).add_(wg.amin(-1), alpha=1 - self.momentum)
                self.range_hi.mul_(self.momentum).add_(wg.amax(-1), alpha=1 - self.momentum)
            return group_params(w.detach(), self.bits, self.group, self.symmetric, self.range_lo, self.range_hi)
        return group_params(w.detach(), self.bits, self.group, self.symmetric)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale, zero = self.params(w)
        return quantize_groups(w, scale, zero, self.bits, self.symmetric, ste=True)[1]

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(integer codes, scale, zero) of ``w`` as the forward pass would quantize it in eval mode."""
        scale, zero = self.params(w)
        q, _ = quantize_groups(w, scale.detach(), zero, self.bits, self.symmetric)
        return q, scale.detach(), zero


class FakeQuantLinear(nn.Module):
    """A Linear (or Conv1D, as ``(out, in)``) with fake-quantized weights and optional per-token activations."""

    def __init__(self, module: nn.Module, bits: int, group_size: int | None = 64, symmetric: bool = True,
                 mode: str = "minmax", act_bits: int | None = None, init: str = "minmax",
                 scale_init: torch.Tensor | None = None, zero_init: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight_matrix(module).detach().clone()
        self.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
        bias = getattr(module, "bias", None)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.weight_quant = WeightFakeQuant(w, bits, group_size, symmetric, mode, init=init, scale_init=scale_init,
                                            zero_init=zero_init)
        self.act_bits = act_bits
        self.from_conv1d = is_conv1d(module)  # converted back to a Conv1D (GPT-2's layout) by convert_qat

    @classmethod
    def from_packed(cls, layer: nn.Module, mode: str = "lsq") -> "FakeQuantLinear":
        """Fake-quant twin of a packed ``WeightOnlyInt4Linear``: latent weight = its dequantized codes, scales
        and zeros = its stored ones (unsigned codes 0..15), so both compute the same weights."""
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(layer.dequantize(torch.float32))
            if layer.bias is not None:
                dense.bias.copy_(layer.bias.float())
        return cls(dense, 4, layer.group, symmetric=False, mode=mode, scale_init=layer.weight_scale.float(),
                   zero_init=layer.weight_zero.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits:
            x = fake_quantize_tokens(x, self.act_bits)
        return nn.functional.linear(x, self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        q = self.weight_quant
        return (f"in={self.in_features}, out={self.out_features}, w{q.bits}g{q.group}, mode={q.mode}, "
                f"act={'a' + str(self.act_bits) if self.act_bits else 'fp'}")


@torch.no_grad()
def dequantized(weight: torch.Tensor, fmt: Format, group_size: int = 64, engine: bool = True,
                symmetric: bool = True) -> torch.Tensor:
    """``weight`` ``(out, in)`` after round-to-nearest quantization to ``fmt`` exactly as the pass stores it."""
    w = weight.detach().float()
    real = engine_format(fmt, group_size, w.shape[1]) if engine else None
    if real == (8, None):
        q, scale = quantize_rows(w)
        return (q.float() * scale.float()[:, None]).to(weight.dtype)
    if real is not None:
        q, scale, zero = quantize_int4(w, real[1], symmetric=symmetric)
        return dequantize_int4(q, scale, zero, real[1]).to(weight.dtype)
    bits, group = parse_format(fmt, group_size)
    return fake_quantize_weight(weight, bits, group)
