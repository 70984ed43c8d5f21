"""Weights counted as stored: float parameters by dtype, and the packed INT8/INT4 weights of quantized modules
(buffers, so ``model.parameters()`` alone reports an INT4 model as almost empty)."""
from __future__ import annotations

import torch

_PACKED = {"weight_int8": ("INT8", 1), "weight_packed": ("INT4", 2)}  # buffer name -> (format, weights per element)
_FLOAT_NAMES = {torch.float32: "FP32", torch.float16: "FP16", torch.bfloat16: "BF16"}


def stored_weights(model: torch.nn.Module) -> dict[str, int]:
    """Weight elements per stored format, e.g. ``{"INT4": 1572864, "FP32": 525312}`` (shared tensors once)."""
    counts: dict[str, int] = {}
    for param in model.parameters():
        name = _FLOAT_NAMES.get(param.dtype, str(param.dtype).replace("torch.", "").upper())
        counts[name] = counts.get(name, 0) + param.numel()
    for name, buffer in model.named_buffers():
        kind = _PACKED.get(name.rsplit(".", 1)[-1])
        if kind is not None:
            counts[kind[0]] = counts.get(kind[0], 0) + buffer.numel() * kind[1]
    return counts


def describe_weights(counts: dict[str, int]) -> str:
    """``"1.57 M INT4 + 0.53 M FP32"``, largest first."""
    return " + ".join(f"{n / 1e6:.2f} M {fmt}" for fmt, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def custom_modules(model: torch.nn.Module) -> list[str]:
    """Names of modules or weights that plain torch/transformers code cannot represent.

    Quantized autolite modules (restored by their pass on load) and tensor-subclass weights
    (torchao) count; ``nn.Linear``, transformers layers and plain float tensors do not.
    """
    found = []
    for name, module in model.named_modules():
        origin = type(module).__module__
        if origin.startswith(("torch.", "transformers.")):
            continue
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if origin.startswith("autolite.quant") or any(not t.is_floating_point() for t in own):
            found.append(f"{name or '<root>'} ({type(module).__name__})")
    for name, param in model.named_parameters():
        if type(param.data) is not torch.Tensor:
            found.append(f"{name} ({type(param.data).__name__})")
    return found
