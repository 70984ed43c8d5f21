"""Where a family keeps its layers, attention projections, heads and FFN: the views passes use."""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn


@dataclasses.dataclass
class AttentionView:
    """One attention block. ``q/k/v`` are None when the projections are fused into ``qkv`` (GPT-2)."""

    module: nn.Module
    q: nn.Module | None
    k: nn.Module | None
    v: nn.Module | None
    o: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv: nn.Module | None = None


@dataclasses.dataclass
class FFNView:
    """One feed-forward block: ``up`` (and ``gate`` for gated FFNs) into ``down``.

    ``gate_up`` is set instead of ``up``/``gate`` when both are fused in one matrix (GLM).
    """

    module: nn.Module
    up: nn.Module | None
    down: nn.Module
    gate: nn.Module | None = None
    gate_up: nn.Module | None = None


@dataclasses.dataclass
class LayerView:
    """One transformer layer of a stack ("encoder" or "decoder")."""

    index: int
    stack: str
    module: nn.Module
    attention: AttentionView
    ffn: FFNView
    cross_attention: AttentionView | None = None


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """A model family: its kind, the HF model types it covers, and how to find its layers.

    ``config_keys`` names the HF config fields a structural pass must keep true
    (``layers``, ``heads``, ``kv_heads``, ``intermediate``, ``hidden``, and ``head_dim`` where the config
    has one that must be written when the head count changes). GPT-2's transposed ``Conv1D``
    linears are told apart by :func:`is_conv1d`, the one check for them.
    """

    name: str
    kind: str  # "encoder" | "decoder" | "seq2seq"
    model_types: tuple[str, ...]
    find_layers: Callable[[nn.Module], list[LayerView]]
    config_keys: dict[str, str]
    members: str = ""
    # Family quirks the passes read (instead of testing the family's name):
    head_count_in_config: bool = False  # the HF config sets the head count without deriving the head size from it
    shared_position_bias: bool = False  # one relative-position bias per stack, held by its first layer (T5)
    onnx_optimizer: str | None = None  # onnxruntime.transformers optimizer model type for this family
    generic: bool = False  # no family module: only the generic passes run (``autolite.arch.generic``)

    def layers(self, model: nn.Module) -> list[LayerView]:
        """Every layer of ``model`` (a bare model or one with a task head)."""
        return self.find_layers(base_model(model))

    def __str__(self) -> str:
        return self.name


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2 family): a linear whose weight is stored ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def base_model(model: nn.Module) -> nn.Module:
    """The HF base model under a task head (``BertForSequenceClassification`` -> ``BertModel``)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def config_value(config, key: str, default=None):
    """Read an int config field by its family-specific name."""
    value = getattr(config, key, default)
    return default if value is None else value
