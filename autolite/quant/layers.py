"""Packed quantized modules: the layers the quantization passes swap in for float linears.

* ``WeightOnlyInt8Linear``: INT8 per-channel weights; ``aten._weight_int8pack_mm`` for small calls.
* ``WeightOnlyInt4Linear``: packed INT4 group-wise weights (``formats``); ``aten._weight_int4pack_mm_for_cpu``
  for small calls. Both dequantize to the activation dtype and run a dense GEMM above ``kernel_max_rows``
  tokens or off CPU (the measured kernels beat the GEMM only at a few rows).
* ``DynamicInt8Linear``: INT8 weights, activations quantized at run time (quantized engines or ``_int_mm``).
* ``StaticInt8Linear``: INT8 weights and a calibrated activation scale, ``torch._int_mm``.

Each holds only integer codes and scales (no float ``weight``), saved as safetensors buffers.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from autolite.errors import BackendUnavailableError
from autolite.quant import common
from autolite.quant.formats import SCALE_DTYPE, dequantize_int4, pack_int4, quantize_int4, quantize_rows, unpack_int4

KERNELS = ("onednn", "x86", "fbgemm", "int_mm")  # DynamicInt8Linear kernels (the buffer stores the index)
ENGINE_KERNELS = KERNELS[:3]


class QuantizedLinearBase(nn.Module):
    """Base of the quantized linears. ``weight`` is None: no float weight is stored, and transformers code
    that probes ``.weight.dtype`` before a cast (T5's feed-forward ``wo``) then skips the cast."""

    weight = None


def int8_rows_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                     kernel_max_rows: int) -> torch.Tensor:
    """``x @ (weight_int8 * scale)ᵀ + bias``: the INT8 kernel for few rows on CPU, an INT8-weight GEMM above."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    if rows.shape[0] <= kernel_max_rows and rows.device.type == "cpu":
        y = torch.ops.aten._weight_int8pack_mm(rows.to(SCALE_DTYPE), weight_int8, scale).to(x.dtype)
    else:
        y = F.linear(rows, weight_int8.to(x.dtype)) * scale.to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.reshape(*x.shape[:-1], weight_int8.shape[0])


class WeightOnlyInt8Linear(QuantizedLinearBase):
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


class WeightOnlyInt4Linear(QuantizedLinearBase):
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


def _reduce_range(kernel: str) -> bool:
    """fbgemm/x86 need 7-bit activations on CPUs without VNNI (16-bit accumulation overflow)."""
    vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    return kernel != "onednn" and not vnni


class DynamicInt8Linear(QuantizedLinearBase):
    """A linear layer with INT8 weights whose forward runs an INT8 kernel (see module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, kernel: str = "onednn") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("kernel", torch.tensor([KERNELS.index(kernel)], dtype=torch.int8))
        self._kernel_name = kernel  # the buffer saves it; reading it back in forward would break torch.compile
        self._packed = None

    @classmethod
    def from_float(cls, module: nn.Module, kernel: str) -> "DynamicInt8Linear":
        return common.from_float_linear(cls, module, lambda w: quantize_rows(w, torch.float32), kernel)

    @property
    def kernel_name(self) -> str:
        return self._kernel_name

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"] = None  # engine-specific packed weight: rebuilt on first use
        return state

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel_name = KERNELS[int(self.kernel[0])]

    def prepack(self) -> None:
        """Pack the weight for the chosen engine (done lazily on the first forward otherwise)."""
        kernel = self.kernel_name
        if kernel not in ENGINE_KERNELS:
            return
        previous = torch.backends.quantized.engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks quantized tensors deprecated; the kernels are current
            qweight = torch._make_per_channel_quantized_tensor(
                self.weight_int8, self.weight_scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            try:
                torch.backends.quantized.engine = kernel
                self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
            finally:
                torch.backends.quantized.engine = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" and self.kernel_name != "int_mm":
            raise BackendUnavailableError(f"INT8 kernel '{self.kernel_name}' runs on CPU only; use kernel: int_mm "
                                          "or weight-only quantization on this device")
        rows, lead = common.flatten_rows(x)
        dtype = rows.dtype
        rows = rows.float()
        if self.kernel_name == "int_mm":
            y = self._int_mm(rows)
        else:
            if self._packed is None:
                self.prepack()
            y = torch.ops.quantized.linear_dynamic(rows, self._packed, _reduce_range(self.kernel_name))
        return y.to(dtype).reshape(*lead, self.out_features)

    def _int_mm(self, rows: torch.Tensor) -> torch.Tensor:
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0  # (M, 1) per token
        q = torch.round(rows / scale).to(torch.int8)
        y = torch._int_mm(q, self.weight_int8.t()).float()  # (M, N) int32 accumulators
        y.mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel_name}"


class StaticInt8Linear(QuantizedLinearBase):
    """INT8 weights and a calibrated activation scale; ``torch._int_mm`` forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("input_scale", torch.ones(1))
        self.register_buffer("smooth_inv", torch.ones(in_features) if smooth else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, module: nn.Module, clip: float, smooth: torch.Tensor | None = None) -> "StaticInt8Linear":
        weight, bias = common.linear_weight(module), common.linear_bias(module)
        layer = cls(weight.shape[1], weight.shape[0], bias is not None, smooth is not None)
        if smooth is not None:
            weight = weight * smooth[None, :]
            layer.smooth_inv = (1.0 / smooth).float()
        layer.weight_int8, layer.weight_scale = quantize_rows(weight, torch.float32)
        layer.input_scale = torch.tensor([clip / 127.0])
        if bias is not None:
            layer.bias = bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, lead = common.flatten_rows(x)
        rows = rows.float()
        if self.smooth_inv is not None:
            rows = rows * self.smooth_inv
        q = torch.round(rows * (1.0 / self.input_scale)).clamp_(-127, 127).to(torch.int8)
        y = torch._int_mm(q, self.weight_int8.t()).float()
        y.mul_(self.weight_scale * self.input_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, input_scale={float(self.input_scale):.4g}, "
                f"smooth={self.smooth_inv is not None}")
