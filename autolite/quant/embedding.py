"""INT8 per-row token embedding and output head, one stored copy when they are tied.

The embedding matrix ``(vocab, hidden)`` is stored as ``weight_int8`` + one BF16 ``weight_scale`` per
row (token). The lookup gathers INT8 rows and scales them. The output head computes
``x @ Eᵀ``: a row of ``E`` is an output channel, so the same per-row scales serve the head, which runs
``aten._weight_int8pack_mm`` for calls of at most ``kernel_max_rows`` tokens (decoding) and an
INT8-weight GEMM above. When the model ties its head to the embedding, :class:`TiedInt8Head` reads the
embedding module's tensors (it owns none), so the saved file holds a single INT8 copy; the model's
``tie_word_embeddings`` is then set to False, since the tie is carried by the modules themselves
(transformers' own tying looks for a float ``weight`` that no longer exists).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autolite.quant import common
from autolite.quant.formats import SCALE_DTYPE, quantize_rows
from autolite.quant.layers import WeightOnlyInt8Linear, int8_rows_linear

class Int8Embedding(nn.Module):
    """Token embedding with INT8 rows and a BF16 scale per row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.out_dtype = dtype
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=SCALE_DTYPE))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, embedding.weight.dtype)
        layer.weight_int8, layer.weight_scale = quantize_rows(embedding.weight)
        return layer

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        common.realign_buffers(self, ("weight_int8", "weight_scale"))  # the tied head's kernel reads them

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight_int8).to(self.out_dtype)
        return rows * F.embedding(input_ids, self.weight_scale[:, None]).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=8 per row"


class TiedInt8Head(nn.Module):
    """Output head sharing an :class:`Int8Embedding`'s INT8 rows and scales (stores nothing itself)."""

    def __init__(self, embedding: Int8Embedding, kernel_max_rows: int = 8, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not a submodule: no second copy in the state dict
        self.kernel_max_rows = kernel_max_rows
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding
        return int8_rows_linear(x, emb.weight_int8, emb.weight_scale, self.bias, self.kernel_max_rows)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits=8, tied to the input embedding"


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _shared_by_several(model: nn.Module, emb: nn.Embedding) -> bool:
    """True when other embedding modules hold the same weight (T5: ``shared`` = encoder/decoder tokens)."""
    ptr = emb.weight.data_ptr()
    return any(isinstance(m, nn.Embedding) and m is not emb and m.weight.data_ptr() == ptr
               for m in model.modules())


def quantize_embeddings(model: nn.Module, kernel_max_rows: int) -> dict[str, str]:
    """Store the input embedding (and the output head when it is an embedding-shaped linear) as INT8 rows.

    Returns the record kept in the recipe: ``{fqn: "embedding" | "tied-head" | "head"}``.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding) or _shared_by_several(model, emb):
        return {}  # e.g. T5's `shared` (encoder and decoder embed_tokens): stays float
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = _names(model)
    record = {names[id(emb)]: "embedding"}
    new_emb = Int8Embedding.from_float(emb)
    if isinstance(head, nn.Linear):
        head_name = names[id(head)]
        if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
            record[head_name] = "tied-head"
            common.set_module(model, head_name, TiedInt8Head(new_emb, kernel_max_rows, common.linear_bias(head)))
            model.config.tie_word_embeddings = False  # the tie now lives in TiedInt8Head (see module docstring)
        else:
            record[head_name] = "head"
            common.set_module(model, head_name, WeightOnlyInt8Linear.from_float(head, kernel_max_rows))
    common.set_module(model, names[id(emb)], new_emb)
    return record


def restore_embeddings(model: nn.Module, record: dict[str, str], kernel_max_rows: int) -> None:
    """Swap in empty INT8 embedding/head modules as recorded by :func:`quantize_embeddings`."""
    new_emb = None
    for name, kind in record.items():
        if kind == "embedding":
            emb = model.get_submodule(name)
            new_emb = Int8Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.weight.dtype)
            common.set_module(model, name, new_emb)
    for name, kind in record.items():
        head = model.get_submodule(name)
        in_features, out_features = common.linear_shape(head) if kind != "embedding" else (0, 0)
        bias = None if kind == "embedding" or head.bias is None else torch.zeros(out_features)
        if kind == "tied-head":
            common.set_module(model, name, TiedInt8Head(new_emb, kernel_max_rows, bias))
        elif kind == "head":
            common.set_module(model, name, WeightOnlyInt8Linear(in_features, out_features, bias is not None,
                                                                kernel_max_rows))
