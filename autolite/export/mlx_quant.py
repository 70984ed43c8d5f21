"""The torch twin of an MLX-quantized export: the same weights, put through MLX's own quantizer.

A quantized MLX export is validated twice: against this twin (the runtime must reproduce the intended
quantized model: rel L2 < 1e-3, which catches layout and kernel mistakes that a loose cosine would
not), and against the FP32 source (its cosine must be at least the twin's minus 0.001).
"""
from __future__ import annotations

import copy

import numpy as np
import torch


def mlx_round_trip(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``weight`` ``(out, in)`` quantized and dequantized by ``mx.quantize`` (affine, groups along ``in``)."""
    import mlx.core as mx

    w = mx.array(weight.detach().float().cpu().numpy())
    packed, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    restored = mx.dequantize(packed, scales, biases, group_size=group_size, bits=bits)
    return torch.from_numpy(np.array(restored)).to(weight.dtype)


def quantized_twin(model: torch.nn.Module, bits: int, group_size: int, embeddings: bool) -> torch.nn.Module:
    """A copy of ``model`` whose Linear (GPT-2 Conv1D) and, with ``embeddings``, Embedding weights went
    through MLX's quantizer, wherever the input width is a multiple of ``group_size`` (MLX's rule)."""
    from transformers.pytorch_utils import Conv1D

    twin = copy.deepcopy(model)
    done: set[int] = set()
    for module in twin.modules():
        weight = getattr(module, "weight", None)
        if weight is None or id(weight) in done:  # tied weights are quantized once
            continue
        if isinstance(module, torch.nn.Linear) or (embeddings and isinstance(module, torch.nn.Embedding)):
            if weight.shape[-1] % group_size == 0:
                weight.data = mlx_round_trip(weight.data, bits, group_size)
        elif isinstance(module, Conv1D) and weight.shape[0] % group_size == 0:  # weight is (in, out)
            weight.data = mlx_round_trip(weight.data.T, bits, group_size).T.contiguous()
        done.add(id(weight))
    return twin.eval()
