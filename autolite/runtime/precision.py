"""The ``precision`` pass: run the whole model in BF16/FP16/FP32.

On CPU, BF16/FP16 matmuls go to oneDNN (AMX/AVX512-BF16 when the CPU has them); LayerNorm and
softmax in PyTorch's CPU kernels accumulate in FP32 for reduced-precision inputs. A dtype the
hardware does not run natively falls back to FP32 (and says so) unless told otherwise.
"""
from __future__ import annotations

import dataclasses

import torch

from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.passes import PassContext, register_pass
from autolite.runtime import hardware
from autolite.runtime.hardware import native_dtypes  # a module attribute here too: tests patch it

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ON_UNSUPPORTED = ("fallback", "error", "emulate")


@dataclasses.dataclass
class Precision(PassConfig):
    """Cast weights and compute to ``dtype`` ("bf16", "fp16", "fp32" or "auto" = the probe's choice).

    ``on_unsupported``: what to do when the device has no native support for ``dtype``:
    "fallback" (keep FP32, note it), "error", or "emulate" (cast anyway; usually slower).
    """

    name = "precision"
    dtype: str = "bf16"
    on_unsupported: str = "fallback"

    def __post_init__(self) -> None:
        if self.dtype not in (*DTYPES, "auto"):
            raise RecipeError(f"precision dtype must be one of {[*DTYPES, 'auto']}, got '{self.dtype}'")
        if self.on_unsupported not in ON_UNSUPPORTED:
            raise RecipeError(f"on_unsupported must be one of {ON_UNSUPPORTED}, got '{self.on_unsupported}'")


def resolve_dtype(config: Precision, device: torch.device, ctx: PassContext) -> str:
    """The dtype to use, after 'auto' and the unsupported-hardware policy."""
    if config.dtype == "auto":
        choice = hardware.choose_backend(hardware.probe()).float_dtype
        ctx.note(f"precision auto -> {choice} (hardware probe)")
        return choice
    if config.dtype in native_dtypes(device) or config.on_unsupported == "emulate":
        return config.dtype
    message = (f"{config.dtype.upper()} is not native on this {device.type} "
               f"(no AMX/AVX512 {config.dtype.upper()} or tensor cores)")
    if config.on_unsupported == "error":
        raise BackendUnavailableError(f"{message}; use on_unsupported: fallback or emulate")
    ctx.note(f"{message}: fell back to FP32")
    return "fp32"


@register_pass(Precision)
def apply_precision(model: torch.nn.Module, config: Precision, ctx: PassContext) -> torch.nn.Module:
    device = next(model.parameters()).device
    dtype = resolve_dtype(config, device, ctx)
    kept = _non_persistent_float_buffers(model)
    model = model.to(DTYPES[dtype])
    for module, name, buffer in kept:
        module._buffers[name] = buffer
    model.config.dtype = dtype_name(DTYPES[dtype])
    return model


def _non_persistent_float_buffers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """Non-persistent float buffers (rotary frequencies): they stay FP32, as ``from_pretrained`` builds
    them, so a saved and reloaded model computes exactly what the in-memory one does."""
    kept = []
    for module in model.modules():
        for name in getattr(module, "_non_persistent_buffers_set", ()):
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.is_floating_point():
                kept.append((module, name, buffer))
    return kept


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
