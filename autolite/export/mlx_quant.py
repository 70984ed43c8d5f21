"""The torch twin of an MLX-quantized export: the same weights, put through MLX's own quantizer.

A quantized MLX export is validated twice: against this twin (the runtime must reproduce the intended
quantized model: rel L2 < 1e-3, which catches layout and kernel mistakes that a loose cosine would
not), and against the FP32 source (its cosine must be at least the twin's minus 0.001).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from autolite.export.common import UnsupportedExportError
from autolite.quant import common
from autolite.quant.embedding import Int8Embedding, TiedInt8Head
from autolite.quant.formats import unpack_int4
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear, QuantizedLinearBase


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


# --- autolite's own INT4/INT8 weights, exported as they are (no re-quantization) ---------------------------
#
# MLX affine groups hold ``w = scale * u + bias``. autolite's INT4 ``w = scale * (q - zero)`` is that with
# ``u = q`` and ``bias = -scale * zero``; INT8 per row ``w = scale * q`` (q in [-127, 127]) is 8-bit affine
# with ``u = q + 128`` and ``bias = -128 * scale``, its one scale repeated over each group. BF16 scales times
# small integers are exact in float32, so the MLX weights equal autolite's dequantized weights bit for bit.
MLX_GROUPS = (32, 64, 128)


def packed_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """autolite's packed weight-only layers and INT8 embeddings by name (tied heads excluded)."""
    kinds = (WeightOnlyInt4Linear, WeightOnlyInt8Linear, Int8Embedding)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def _codes_and_params(module: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """``(u (out, in) uint, scale, bias (out, groups) float32, group, bits)`` of one packed module."""
    if isinstance(module, WeightOnlyInt4Linear):
        u = unpack_int4(module.weight_packed).numpy().astype(np.uint32)
        scale = module.weight_scale.float().numpy()
        bias = -scale * module.weight_zero.numpy().astype(np.float32)
        group = module.group
        if group not in MLX_GROUPS:  # e.g. 256: the same scale/bias over two MLX groups of 128
            scale, bias, group = np.repeat(scale, group // 128, 1), np.repeat(bias, group // 128, 1), 128
        return u, scale, bias, group, 4
    q = module.weight_int8.numpy().astype(np.int32)
    group = next((g for g in reversed(MLX_GROUPS) if q.shape[1] % g == 0), None)
    if group is None:
        raise UnsupportedExportError(f"an INT8 layer of width {q.shape[1]} has no MLX group size (32, 64 or 128 "
                                     "must divide it)")
    scale = np.repeat(module.weight_scale.float().numpy()[:, None], q.shape[1] // group, 1)
    return (q + 128).astype(np.uint32), scale, -128.0 * scale, group, 8


def mlx_arrays(module: torch.nn.Module) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The module's MLX ``weight`` (uint32, ``32 / bits`` codes per word, lowest bits first), ``scales`` and
    ``biases``, and its ``{"group_size", "bits"}``."""
    u, scale, bias, group, bits = _codes_and_params(module)
    per_word = 32 // bits
    words = u.reshape(u.shape[0], -1, per_word) << (np.arange(per_word, dtype=np.uint32) * bits)
    packed = np.bitwise_or.reduce(words, axis=-1).astype(np.uint32)
    return ({"weight": packed, "scales": scale.astype(np.float32), "biases": bias.astype(np.float32)},
            {"group_size": group, "bits": bits})


def dequantized_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A float copy of a model holding packed layers: each becomes the HF module it replaced (``nn.Linear``,
    GPT-2 ``Conv1D``, ``nn.Embedding``) with autolite's dequantized weights, so HF code can save it and the
    torch reference runs the very weights the export holds, in FP32."""
    from transformers.pytorch_utils import Conv1D

    twin = copy.deepcopy(model)
    packed = packed_modules(twin)
    for name, module in list(twin.named_modules()):
        if isinstance(module, TiedInt8Head):
            new = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            new.weight.data = module.embedding.dequantize(torch.float32)
        elif isinstance(module, Int8Embedding):
            new = torch.nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx)
            new.weight.data = module.dequantize(torch.float32)
        elif name in packed or isinstance(module, QuantizedLinearBase):
            if name not in packed:
                raise UnsupportedExportError(f"MLX export takes autolite's weight-only INT4/INT8 layers as they "
                                             f"are; {type(module).__name__} ('{name}') is not one of them")
            weight = module.dequantize(torch.float32)
            gpt2 = getattr(model.config, "model_type", "") == "gpt2"
            new = Conv1D(weight.shape[0], weight.shape[1]) if gpt2 else torch.nn.Linear(
                weight.shape[1], weight.shape[0], bias=module.bias is not None)
            new.weight.data = weight.t().contiguous() if gpt2 else weight
        else:
            continue
        if getattr(module, "bias", None) is not None:
            new.bias.data = module.bias.detach().float().clone()
        common.set_module(twin, name, new)
    return twin.float().eval()
