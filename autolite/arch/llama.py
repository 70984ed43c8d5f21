"""Llama-like decoders: Llama, Qwen2/Qwen3, Mistral, GLM (fused gate_up), with grouped-query attention."""
from __future__ import annotations

from torch import nn

from autolite.arch.base import ArchSpec, AttentionView, FFNView, LayerView


def _llama_layers(base: nn.Module) -> list[LayerView]:
    config = base.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    views = []
    for i, layer in enumerate(base.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if hasattr(mlp, "gate_up_proj"):  # GLM fuses gate and up in one matrix
            ffn = FFNView(module=mlp, up=None, down=mlp.down_proj, gate_up=mlp.gate_up_proj)
        else:
            ffn = FFNView(module=mlp, up=mlp.up_proj, gate=mlp.gate_proj, down=mlp.down_proj)
        views.append(LayerView(
            index=i, stack="decoder", module=layer,
            attention=AttentionView(module=attn, q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=attn.o_proj,
                                    num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim),
            ffn=ffn,
        ))
    return views


LLAMA = ArchSpec(
    name="llama", kind="decoder", model_types=("llama", "qwen2", "qwen3", "mistral", "glm"),
    find_layers=_llama_layers,
    config_keys={"layers": "num_hidden_layers", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
                 "intermediate": "intermediate_size", "hidden": "hidden_size", "head_dim": "head_dim"},
    members="Llama, Qwen2, Qwen3, Mistral, GLM", head_count_in_config=True,
)

SPECS = [LLAMA]
