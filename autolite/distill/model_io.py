"""What the distillation losses read from a model: last hidden state, logits, and one layer's Q/K/V."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from autolite.arch import ArchSpec


def hidden_width(model: torch.nn.Module) -> int:
    config = model.config
    for key in ("hidden_size", "dim", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot read the hidden width of {type(model).__name__}")


def forward_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Forward with hidden states: ``{"hidden": (B, T, H), "layers": [(B, T, H)] (embeddings, then each
    layer's output), "logits": (B, C) | (B, T, V) | None}``."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        hidden = out.hidden_states[-1]
    layers = list(out.hidden_states) if getattr(out, "hidden_states", None) is not None else None
    return {"hidden": hidden, "layers": layers, "logits": getattr(out, "logits", None)}


@contextlib.contextmanager
def capture_qkv(model: torch.nn.Module, family: ArchSpec, enabled: bool = True,
                layer: int = -1) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the Q, K, V projection outputs ``(B, T, width)`` of one layer (the last by default)."""
    captured: dict[str, torch.Tensor] = {}
    if not enabled:
        yield captured
        return
    attention = family.layers(model)[layer].attention
    handles = []
    if attention.qkv is not None:  # fused (GPT-2 Conv1D): split the output in three
        def fused_hook(_module, _inputs, output):
            captured["q"], captured["k"], captured["v"] = output.chunk(3, dim=-1)
        handles.append(attention.qkv.register_forward_hook(fused_hook))
    else:
        for name in ("q", "k", "v"):
            def hook(_module, _inputs, output, name=name):
                captured[name] = output
            handles.append(getattr(attention, name).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
