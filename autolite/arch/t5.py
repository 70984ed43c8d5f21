"""T5 encoder-decoder (T5, mT5): two stacks, self-attention in every block, cross-attention in the decoder."""
from __future__ import annotations

from torch import nn

from autolite.arch.base import ArchSpec, AttentionView, FFNView, LayerView


def _attention(layer: nn.Module, config) -> AttentionView:
    attn = getattr(layer, "SelfAttention", None) or layer.EncDecAttention
    return AttentionView(module=attn, q=attn.q, k=attn.k, v=attn.v, o=attn.o, num_heads=attn.n_heads,
                         num_kv_heads=attn.n_heads, head_dim=attn.key_value_proj_dim)


def _ffn(layer: nn.Module) -> FFNView:
    dense = layer.DenseReluDense
    if hasattr(dense, "wi_0"):  # gated-GELU variant (T5 v1.1, mT5)
        return FFNView(module=dense, up=dense.wi_1, gate=dense.wi_0, down=dense.wo)
    return FFNView(module=dense, up=dense.wi, down=dense.wo)


def _t5_layers(base: nn.Module) -> list[LayerView]:
    views = []
    for stack_name in ("encoder", "decoder"):
        stack = getattr(base, stack_name, None)
        if stack is None:
            continue
        for i, block in enumerate(stack.block):
            parts = block.layer
            cross = _attention(parts[1], base.config) if stack_name == "decoder" else None
            views.append(LayerView(index=i, stack=stack_name, module=block,
                                   attention=_attention(parts[0], base.config),
                                   ffn=_ffn(parts[-1]), cross_attention=cross))
    return views


T5 = ArchSpec(
    name="t5", kind="seq2seq", model_types=("t5", "mt5"),
    find_layers=_t5_layers,
    config_keys={"layers": "num_layers", "heads": "num_heads", "intermediate": "d_ff", "hidden": "d_model",
                 "decoder_layers": "num_decoder_layers"},
    members="T5, mT5", head_count_in_config=True, shared_position_bias=True, onnx_optimizer="t5",
)

SPECS = [T5]
