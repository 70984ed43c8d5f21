"""Model tensors -> GGUF tensors (ggml block formats), re-expressing autolite's quantized weights exactly.

ggml's 32-weight blocks (``d``, ``m`` F16; ``qs`` 16 bytes, element j in the low nibble of byte j and
element j + 16 in its high nibble):

- Q4_0 ``w = d * (q - 8)``: an INT4 group whose zeros are all 8 (symmetric), ``d = scale``.
- Q4_1 ``w = d * q + m``: any INT4 group, ``d = scale``, ``m = -scale * zero``.
- Q8_0 ``w = d * q``: INT8 per row (weight-only INT8, INT8 embedding), ``d = scale``, same int8 codes.

Codes are copied; the only rounding is BF16 -> F16 for ``d`` (exact inside F16's normal range) and
``-scale * zero`` -> F16 for ``m`` (up to 12 significant bits into 11): both are measured and reported.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import gguf
import numpy as np
import torch
from torch import nn

from autolite.export.common import UnsupportedExportError
from autolite.export.validate import Tolerance, Validation
from autolite.quant import common
from autolite.quant.embedding import Int8Embedding, TiedInt8Head
from autolite.quant.formats import unpack_int4
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear

BLOCK = 32
READBACK = Tolerance(max_rel_l2=1e-3)  # F16 rounding of float matrices alone gives ~3e-4
_FLOAT_DTYPES = {"f16": np.float16, "f32": np.float32}


@dataclasses.dataclass
class GTensor:
    """One GGUF tensor: ``data`` as written (float array, or uint8 block bytes with ``raw_dtype``), the kind
    of source (``q4_0``, ``q4_1``, ``q8_0``, ``float``, ``norm``) and the weights it must reproduce."""

    name: str
    data: np.ndarray
    raw_dtype: Any
    kind: str
    reference: Callable[[], np.ndarray]
    rounding: float = 0.0  # max |w_gguf - w_model| introduced by F16 rounding of d / m


def collect(model: nn.Module, arch: str, float_type: str) -> list[GTensor]:
    """Every tensor of ``model`` in GGUF names and formats; raises before anything is written."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), layers)
    tensors: list[GTensor] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        own = [(k, t) for k, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
               if t is not None and k != "inv_freq" and not k.startswith("original_")]
        if not own or id(own[0][1]) in seen:
            continue  # containers, rotary tables, tied weights (llama.cpp then reuses token_embd as output)
        seen.update(id(t) for _, t in own)
        base = names.get_name(module_name)
        if base is None:
            raise UnsupportedExportError(f"GGUF has no tensor for '{module_name}' ({type(module).__name__}) in "
                                         f"llama.cpp's {arch.lower()} layout; this model cannot be expressed")
        permute = _rope_permutation(config, arch, base)
        tensors.extend(_module_tensors(module, base, float_type, permute))
    _check_uniform(tensors)
    return tensors


def _check_uniform(tensors: list[GTensor]) -> None:
    """llama.cpp builds every block from one set of hyper-parameters: blocks must have equal shapes."""
    first: dict[str, tuple] = {}
    for t in tensors:
        if t.name.startswith("blk."):
            role = t.name.split(".", 2)[2]
            shape = t.reference().shape  # the logical shape, whatever the block format
            if first.setdefault(role, shape) != shape:
                raise UnsupportedExportError(f"GGUF needs every layer the same shape; {t.name} is {shape}, "
                                             f"layer 0's {first[role]} (non-uniform pruning): export 'hf' or 'onnx'")


def _rope_permutation(config: Any, arch: str, base: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """Llama's q/k rows reordered from HF's half-split RoPE to llama.cpp's interleaved pairs."""
    if arch != "LLAMA" or not base.endswith(("attn_q", "attn_k")):
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def permute(rows: np.ndarray) -> np.ndarray:  # (out, ...) with out = heads * head_dim
        heads = rows.shape[0] // head_dim
        return rows.reshape(heads, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
    return permute


def _module_tensors(module: nn.Module, base: str, float_type: str, permute) -> list[GTensor]:
    keep = permute or (lambda a: a)
    out: list[GTensor] = []
    if isinstance(module, WeightOnlyInt4Linear):
        out.append(_int4(module, base, keep))
    elif isinstance(module, (WeightOnlyInt8Linear, Int8Embedding)):
        out.append(_int8(module.weight_int8, module.weight_scale, base, float_type, keep))
    elif isinstance(module, TiedInt8Head):
        pass  # shares the embedding's INT8 rows: llama.cpp reuses token_embd
    elif common.is_linear(module) or isinstance(module, nn.Embedding):
        weight = common.linear_weight(module) if common.is_linear(module) else module.weight.detach().float()
        out.append(_float(f"{base}.weight", keep(weight.numpy()), float_type))
    elif type(module).__module__.startswith(("torch.", "transformers.")) and "Norm" in type(module).__name__:
        out.append(_float(f"{base}.weight", module.weight.detach().float().numpy(), "f32", kind="norm"))
    else:
        raise UnsupportedExportError(f"GGUF export cannot express {type(module).__name__} ('{base}'): it takes "
                                     "float, weight-only INT8/INT4 and INT8-embedding layers (llama.cpp runs no "
                                     "activation quantization of autolite's kind)")
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        out.append(_float(f"{base}.bias", keep(bias.detach().float().numpy()), "f32", kind="norm"))
    return out


def _float(name: str, array: np.ndarray, float_type: str, kind: str = "float") -> GTensor:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if float_type == "bf16":
        data = gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16)
        return GTensor(name, data, gguf.GGMLQuantizationType.BF16, kind, lambda: array)
    return GTensor(name, array.astype(_FLOAT_DTYPES[float_type]), None, kind, lambda: array)


def _f16_bytes(values: np.ndarray) -> tuple[np.ndarray, float]:
    """``values`` (float32) as F16 bytes (..., 2) and the largest absolute rounding."""
    half = values.astype(np.float16)
    if not np.isfinite(half).all():
        raise UnsupportedExportError("a quantization scale exceeds F16's range (65504); GGUF block formats "
                                     "store scales as F16")
    err = float(np.abs(half.astype(np.float32) - values).max()) if values.size else 0.0
    return half.view(np.uint8).reshape(*values.shape, 2), err


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """(out, nblocks, 32) codes -> (out, nblocks, 16) bytes in ggml's order."""
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def _int4(module: nn.Module, base: str, permute) -> GTensor:
    out_f, in_f = module.out_features, module.in_features
    reps = module.group // BLOCK  # a group of 32k weights = k blocks sharing its scale and zero
    codes = permute(unpack_int4(module.weight_packed).numpy())
    scale = permute(np.repeat(module.weight_scale.float().numpy(), reps, axis=1))  # (out, nblocks)
    zero = permute(np.repeat(module.weight_zero.numpy().astype(np.float32), reps, axis=1))
    d, err = _f16_bytes(scale)
    qs = _nibbles(codes.reshape(out_f, in_f // BLOCK, BLOCK))
    if (zero == 8).all():
        data, qtype, kind = np.concatenate([d, qs], -1), gguf.GGMLQuantizationType.Q4_0, "q4_0"
    else:
        m, err_m = _f16_bytes(-scale * zero)
        data, qtype, kind = np.concatenate([d, m, qs], -1), gguf.GGMLQuantizationType.Q4_1, "q4_1"
        err = err * 15 + err_m  # |Δd| * q + |Δm| bounds the weight change
    weight = permute(module.dequantize(torch.float32).numpy())
    return GTensor(f"{base}.weight", data.reshape(out_f, -1), qtype, kind, lambda: weight,
                   rounding=err if kind == "q4_1" else err * 8)  # Q4_0: |Δd| * |q - 8| <= 8 |Δd|


def _int8(q: torch.Tensor, scale: torch.Tensor, base: str, float_type: str, permute) -> GTensor:
    rows, cols = q.shape
    weight = permute((q.float() * scale.float()[:, None]).numpy())
    if cols % BLOCK:
        tensor = _float(f"{base}.weight", weight, float_type)
        tensor.kind = "q8_float"  # the row length is not a multiple of 32: written as float (noted)
        return tensor
    d, err = _f16_bytes(permute(np.repeat(scale.float().numpy()[:, None], cols // BLOCK, axis=1)))
    qs = permute(q.numpy()).view(np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    data = np.concatenate([d, qs], -1).reshape(rows, -1)
    return GTensor(f"{base}.weight", data, gguf.GGMLQuantizationType.Q8_0, "q8_0", lambda: weight,
                   rounding=err * 127)


def precision_label(tensors: list[GTensor]) -> str:
    """E.g. ``q4_1+f16`` from the kinds of the matrices written."""
    kinds = sorted({t.kind for t in tensors if t.kind not in ("norm", "float", "q8_float")})
    floats = "float" in {t.kind for t in tensors} or not kinds
    return "+".join([*kinds, *(["float"] if floats else [])])


def file_type(tensors: list[GTensor]) -> int:
    """llama.cpp's ``general.file_type`` (the main matrix type): 2 Q4_0, 3 Q4_1, 7 Q8_0, 1 F16, 0 F32."""
    kinds = [t.kind for t in tensors]
    for kind, ftype in (("q4_0", gguf.LlamaFileType.MOSTLY_Q4_0), ("q4_1", gguf.LlamaFileType.MOSTLY_Q4_1),
                        ("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0)):
        if kind in kinds:
            return int(ftype)
    dtypes = {t.data.dtype for t in tensors if t.kind == "float"}
    return int(gguf.LlamaFileType.MOSTLY_F16 if np.dtype(np.float16) in dtypes else gguf.LlamaFileType.ALL_F32)


def notes(tensors: list[GTensor], float_type: str) -> list[str]:
    """What was written how, and what was rounded."""
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.kind] = counts.get(t.kind, 0) + 1
    lines = [f"GGUF tensors: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))} (float matrices as "
             f"{float_type}, norms and biases F32)"]
    quantized = [t for t in tensors if t.kind in ("q4_0", "q4_1", "q8_0")]
    if quantized:
        worst = max(t.rounding for t in quantized)
        lines.append(f"autolite's codes copied unchanged into ggml blocks; F16 rounding of block scales"
                     f"{' and Q4_1 offsets m = -scale*zero' if counts.get('q4_1') else ''}: max weight change "
                     f"{worst:.3g}")
    if counts.get("q8_float"):
        lines.append(f"{counts['q8_float']} INT8 tensor(s) with rows not a multiple of 32 written as {float_type}")
    return lines


def check_blocks(tensors: list[GTensor]) -> Validation:
    """Dequantize every tensor's bytes as written, with gguf's own code, and compare with the model's weights
    (the file itself is then checked by loading it in llama.cpp, or in tests by ``gguf.GGUFReader``)."""
    diff_sq = ref_sq = got_sq = dot = max_abs = worst = 0.0
    for t in tensors:
        qtype = t.raw_dtype if t.raw_dtype is not None else (
            gguf.GGMLQuantizationType.F16 if t.data.dtype == np.float16 else gguf.GGMLQuantizationType.F32)
        got = np.asarray(gguf.quants.dequantize(t.data, qtype), dtype=np.float64).reshape(-1)
        want = np.asarray(t.reference(), dtype=np.float64).reshape(-1)
        diff = got - want
        max_abs = max(max_abs, float(np.abs(diff).max()))
        diff_sq, ref_sq = diff_sq + float(diff @ diff), ref_sq + float(want @ want)
        got_sq, dot = got_sq + float(got @ got), dot + float(got @ want)
        worst = max(worst, float(np.sqrt(diff @ diff / max(want @ want, 1e-24))))
    rel_l2 = float(np.sqrt(diff_sq / max(ref_sq, 1e-24)))
    return Validation(against="the model's own (dequantized) weights, ggml blocks decoded by gguf.quants", texts=0,
                      max_abs=max_abs, rel_l2=rel_l2, cosine=dot / max(np.sqrt(got_sq * ref_sq), 1e-24),
                      tolerance=READBACK.describe(), passed=rel_l2 < READBACK.max_rel_l2,
                      extra={"worst_tensor_rel_l2": worst})
