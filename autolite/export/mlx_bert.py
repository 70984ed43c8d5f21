"""A small MLX definition of BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa, MiniLM, DistilBERT).

mlx-lm covers decoders only; this module runs exported encoders in MLX. Parameter names follow HF's
``BertModel`` (DistilBERT weights are renamed on export), so an export is the HF weights without the
task head and pooler, plus ``mlx_bert`` arguments (and ``quantization`` when quantized) in config.json.

    model, tokenizer = load("out/")                  # out/ written by autolite.export(..., format="mlx")
    hidden = model(input_ids, attention_mask)         # (B, T, H) mx.array
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

_ACTIVATIONS = {"gelu": nn.gelu, "gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx, "relu": nn.relu}


@dataclasses.dataclass
class BertArgs:
    """Shapes and conventions of one encoder (written to config.json as ``mlx_bert``)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    head_dim: int = 0  # 0 = hidden_size // num_attention_heads
    roberta_positions: bool = False  # RoBERTa counts positions from pad_token_id + 1, skipping padding
    pad_token_id: int = 0

    @property
    def heads_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


class Embeddings(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.args = args
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        if args.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        if self.args.roberta_positions:
            real = (input_ids != self.args.pad_token_id).astype(mx.int32)
            positions = mx.cumsum(real, axis=1) * real + self.args.pad_token_id
        else:
            positions = mx.broadcast_to(mx.arange(input_ids.shape[1]), input_ids.shape)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if self.args.type_vocab_size:
            x = x + self.token_type_embeddings(mx.zeros_like(input_ids))
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        inner = args.num_attention_heads * args.heads_dim
        self.heads, self.head_dim = args.num_attention_heads, args.heads_dim
        self.query = nn.Linear(args.hidden_size, inner)
        self.key = nn.Linear(args.hidden_size, inner)
        self.value = nn.Linear(args.hidden_size, inner)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, T, _ = x.shape

        def split(t: mx.array) -> mx.array:  # (B, T, nh*hs) -> (B, nh, T, hs)
            return t.reshape(B, T, self.heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(B, T, -1)


class DenseNorm(nn.Module):
    """``dense`` then residual add and LayerNorm (HF's BertSelfOutput / BertOutput)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        setattr(self, "self", SelfAttention(args))  # HF's parameter name: attention.self.query
        self.output = DenseNorm(args.num_attention_heads * args.heads_dim, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self["self"](x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self.act = _ACTIVATIONS[args.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.intermediate = Intermediate(args)
        self.output = DenseNorm(args.intermediate_size, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.layer = [Layer(args) for _ in range(args.num_hidden_layers)]


class BertModel(nn.Module):
    """Embeddings + encoder layers; returns the last hidden state ``(B, T, H)``."""

    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.embeddings = Embeddings(args)
        self.encoder = Encoder(args)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None) -> mx.array:
        x = self.embeddings(input_ids)
        if attention_mask is None:
            attention_mask = mx.ones(input_ids.shape)
        mask = ((1.0 - attention_mask.astype(x.dtype)) * -1e9)[:, None, None, :]  # (B, 1, 1, T) additive
        for layer in self.encoder.layer:
            x = layer(x, mask.astype(x.dtype))
        return x


def quantizable(group_size: int):
    """Which modules MLX quantizes: Linear layers whose input width is a multiple of the group size."""
    return lambda _path, module: isinstance(module, nn.Linear) and module.weight.shape[-1] % group_size == 0


def build(config: dict[str, Any]) -> BertModel:
    """The (possibly quantized) model skeleton a config.json describes."""
    model = BertModel(BertArgs(**config["mlx_bert"]))
    quant = config.get("quantization")
    if quant:
        nn.quantize(model, group_size=quant["group_size"], bits=quant["bits"],
                    class_predicate=quantizable(quant["group_size"]))
    return model


def load(directory: str | Path) -> tuple[BertModel, Any]:
    """Load an MLX encoder export: ``(model, tokenizer)``."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model = build(config)
    model.load_weights(str(directory / "model.safetensors"))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(directory))
