"""Prunable groups of a model (attention heads, FFN neurons) and the surgery that physically removes them.

A *part* is one axis of one module whose channels belong to heads/neurons: ``(module, axis, offset)``
where ``axis`` is "out" (rows of a Linear, columns of a Conv1D, plus the bias) or "in" (the input side),
and ``offset`` is where the group's channels start in a fused matrix (GPT-2 ``c_attn``, GLM ``gate_up``).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from autolite.arch import ArchSpec, AttentionView, FFNView, LayerView, is_conv1d
from autolite.errors import UnsupportedArchitectureError


@dataclasses.dataclass
class Part:
    module: nn.Module
    axis: str  # "out" | "in" | "emb" (embedding columns: T5 relative attention bias)
    offset: int = 0


@dataclasses.dataclass
class HeadGroup:
    """The attention heads of one block: query-side parts (q, o) and key/value-side parts (k, v)."""

    key: str
    view: AttentionView
    q_parts: list[Part]
    kv_parts: list[Part]
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclasses.dataclass
class NeuronGroup:
    """The intermediate neurons of one FFN: up/gate rows and down columns."""

    key: str
    view: FFNView
    parts: list[Part]
    size: int


def axis_tensors(part: Part) -> list[tuple[torch.Tensor, int]]:
    """``(tensor, dim)`` pairs whose ``dim`` indexes the part's channels."""
    module, axis = part.module, part.axis
    if axis == "emb":
        return [(module.weight, 1)]
    weight_dim = {("out", False): 0, ("in", False): 1, ("out", True): 1, ("in", True): 0}[(axis, is_conv1d(module))]
    pairs = [(module.weight, weight_dim)]
    if axis == "out" and getattr(module, "bias", None) is not None:
        pairs.append((module.bias, 0))
    return pairs


def layer_key(view: LayerView) -> str:
    return f"{view.stack}.{view.index}"


def head_groups(family: ArchSpec, model: nn.Module) -> list[HeadGroup]:
    """Every attention block's heads (T5 decoder cross-attention as ``<key>.cross``)."""
    groups = []
    for view in family.layers(model):
        groups.append(_head_group(layer_key(view), view.attention))
        if view.cross_attention is not None:
            groups.append(_head_group(layer_key(view) + ".cross", view.cross_attention))
    return groups


def _head_group(key: str, attn: AttentionView) -> HeadGroup:
    heads, kv, dim = current_heads(attn), None, attn.head_dim
    if attn.qkv is not None:  # GPT-2: q, k, v side by side in one Conv1D
        width = heads * dim
        q_parts = [Part(attn.qkv, "out", 0), Part(attn.o, "in")]
        kv_parts = [Part(attn.qkv, "out", width), Part(attn.qkv, "out", 2 * width)]
        kv = heads
    else:
        q_parts = [Part(attn.q, "out"), Part(attn.o, "in")]
        kv_parts = [Part(attn.k, "out"), Part(attn.v, "out")]
        kv = _out_features(attn.k) // dim
    bias = getattr(attn.module, "relative_attention_bias", None)
    if bias is not None:
        q_parts.append(Part(bias, "emb"))
    return HeadGroup(key, attn, q_parts, kv_parts, heads, kv, dim)


def current_heads(attn: AttentionView) -> int:
    """Query heads as the weights say now (views report the config's count)."""
    return _in_features(attn.o) // attn.head_dim


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if is_conv1d(module) else module.weight.shape[0]


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if is_conv1d(module) else module.weight.shape[1]


def neuron_groups(family: ArchSpec, model: nn.Module) -> list[NeuronGroup]:
    """Every FFN's intermediate neurons."""
    groups = []
    for view in family.layers(model):
        ffn = view.ffn
        size = _in_features(ffn.down)
        if ffn.gate_up is not None:  # GLM: [gate; up] stacked in one matrix
            parts = [Part(ffn.gate_up, "out", 0), Part(ffn.gate_up, "out", size)]
        else:
            parts = [Part(ffn.up, "out")] + ([Part(ffn.gate, "out")] if ffn.gate is not None else [])
        groups.append(NeuronGroup(layer_key(view), ffn, parts + [Part(ffn.down, "in")], size))
    return groups


def channel_index(units: torch.Tensor, width: int) -> torch.Tensor:
    """Channel indices of the kept ``units`` (heads of ``width`` channels each), in order."""
    units = units.sort().values
    return (units[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def shrink_part(part: Part, keep: torch.Tensor, span: int) -> None:
    """Keep channels ``keep`` (relative to ``part.offset``) of a segment ``span`` channels wide."""
    for tensor, dim in axis_tensors(part):
        size = tensor.shape[dim]
        index = torch.cat([torch.arange(part.offset), part.offset + keep.to(torch.long),
                           torch.arange(part.offset + span, size)])
        tensor.data = tensor.data.index_select(dim, index.to(tensor.device)).contiguous()
        if tensor.grad is not None:
            tensor.grad = None
    _sync_shape(part.module)


def _sync_shape(module: nn.Module) -> None:
    """Keep a module's size attributes true after its weight changed shape."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = weight.shape[1]
    elif is_conv1d(module):
        module.nx, module.nf = weight.shape
    else:
        raise UnsupportedArchitectureError(f"cannot prune a {type(module).__name__}; expected Linear/Conv1D")
