"""Quantization primitives on tensors: scale dtype, group rules, INT8 rows, INT4 codes, format names.

Everything above (packed modules, fake quantization, GPTQ, the passes) quantizes through these, so a
format is defined once. INT4 codes are unsigned ``q`` in [0, 15] with ``w = (q - zero) * scale`` per group;
INT8 rows are symmetric, ``w = q * scale`` with one scale per row (output channel).
Format names: an integer width ``b``, or ``w4g32`` / ``w4g64`` / ``w4g128`` / ``w4g256`` (packed INT4, BF16
scale + uint8 zero per group) and ``w8`` (INT8, one BF16 scale per output channel).
"""
from __future__ import annotations

import re
from typing import Union

import torch

from autolite.errors import RecipeError

SCALE_DTYPE = torch.bfloat16  # the CPU low-bit kernels read BF16 scales with BF16 activations
SCALE_BITS = 16
GROUP_SIZES = (32, 64, 128, 256)  # INT4 groups the packed engine supports
ENGINE_FORMATS = ("w8", "w4g32", "w4g64", "w4g128")
Format = Union[int, str]
_FORMAT = re.compile(r"w(\d+)(?:g(\d+))?")


def packed_group(in_features: int, group_size: int) -> int | None:
    """The packed INT4 group of a row of ``in_features``: the largest supported group <= ``group_size``
    dividing it (None when none does)."""
    group = group_size
    while group >= GROUP_SIZES[0]:
        if in_features % group == 0:
            return group
        group //= 2
    return None


def effective_group(in_features: int, group_size: int | None) -> int:
    """The fake-quant group of a row of ``in_features``: per-channel when None/0 or it does not divide."""
    if not group_size or group_size >= in_features or in_features % group_size:
        return in_features
    return group_size


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range: signed for symmetric, unsigned otherwise."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def quantize_rows(weight: torch.Tensor, scale_dtype: torch.dtype = SCALE_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per row: ``(q (rows, cols) int8, scale (rows,) in scale_dtype)``."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(1).clamp(min=1e-8) / 127.0).to(scale_dtype)
    q = torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _int4_params(groups: torch.Tensor, symmetric: bool, shrink: float, bits: int = 4
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (BF16-rounded, as float) and integer zero of each group for a range shrunk by ``shrink``."""
    levels = 2 ** bits - 1
    if symmetric:
        scale = groups.abs().amax(-1) * shrink / (levels // 2)
        zero = torch.full_like(scale, float(levels // 2 + 1))
    else:
        low, high = groups.amin(-1).clamp(max=0) * shrink, groups.amax(-1).clamp(min=0) * shrink
        scale = (high - low) / levels
        zero = torch.round(-low / scale.clamp(min=1e-12)).clamp(0, levels)
    return scale.clamp(min=1e-8).to(SCALE_DTYPE).float(), zero


def _codes(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int = 4) -> torch.Tensor:
    return (torch.round(groups / scale[..., None]) + zero[..., None]).clamp(0, 2 ** bits - 1)


def search_group_params(groups: torch.Tensor, symmetric: bool, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``groups`` (out, ngroups, group): the scale (BF16-rounded, as float) and integer zero
    (unsigned codes) whose range, shrunk to 70-100% of min/max, gives the least squared weight error
    (outliers clipped when that lowers the error, as round-to-nearest refinements do)."""
    def error(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return ((_codes(groups, s, z, bits) - z[..., None]) * s[..., None] - groups).pow(2).sum(-1)

    scale, zero = _int4_params(groups, symmetric, 1.0, bits)
    best = error(scale, zero)
    for shrink in torch.linspace(0.70, 0.98, 15).tolist():
        s, z = _int4_params(groups, symmetric, shrink, bits)
        err = error(s, z)
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
    scale, zero = search_group_params(groups, symmetric) if search else _int4_params(groups, symmetric, 1.0)
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


def parse_format(fmt: Format, group_size: int) -> tuple[int, int | None]:
    """(bits, group) of a format; group None = one scale per output channel (``w8``)."""
    if isinstance(fmt, bool) or not isinstance(fmt, (int, str)):
        raise RecipeError(f"quantization format must be a width or a name like w4g64 / w8, got {fmt!r}")
    if isinstance(fmt, int):
        return fmt, group_size
    match = _FORMAT.fullmatch(fmt.strip().lower())
    if not match:
        raise RecipeError(f"unknown quantization format '{fmt}'; use w4g32, w4g64, w4g128, w4g256, w8 or a width")
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


def engine_format(fmt: Format, group_size: int, in_features: int) -> tuple[int, int | None] | None:
    """(bits, group) the packed engine stores ``fmt`` as for this width (group None = per channel; a group
    that does not divide the width falls back to :func:`packed_group`), else None."""
    bits, group = parse_format(fmt, group_size)
    if bits == 8 and (group is None or isinstance(fmt, int)):
        return 8, None
    if bits == 4 and group in GROUP_SIZES and packed_group(in_features, group) is not None:
        return 4, packed_group(in_features, group)
    return None


def bits_per_weight(bits: int, group_size: int, scale_bits: int = SCALE_BITS, zero_bits: int = 0) -> float:
    """Storage bits per weight of ``bits``-bit codes with one scale (and zero) per ``group_size`` weights."""
    return bits + (scale_bits + zero_bits) / group_size if bits < 16 else float(bits)


def format_bits(fmt: Format, in_features: int, group_size: int = 64, engine: bool = True) -> float:
    """Stored bits per weight of ``fmt`` on a linear with ``in_features`` inputs (scales and zeros counted)."""
    bits, group = parse_format(fmt, group_size)
    if bits >= 16:
        return 16.0
    real = engine_format(fmt, group_size, in_features) if engine else None
    if real == (8, None):
        return 8.0 + SCALE_BITS / in_features
    if real is not None:
        return bits_per_weight(4, real[1], SCALE_BITS, 8)
    return bits_per_weight(bits, group or in_features)
