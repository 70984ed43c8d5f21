"""GPT-2: fused q/k/v in one Conv1D (``c_attn``), Conv1D projections (weights stored input-major)."""
from __future__ import annotations

from torch import nn

from autolite.arch.base import ArchSpec, AttentionView, FFNView, LayerView


def _gpt2_layers(base: nn.Module) -> list[LayerView]:
    config = base.config
    heads = config.n_head
    views = []
    for i, block in enumerate(base.h):
        attn = block.attn
        views.append(LayerView(
            index=i, stack="decoder", module=block,
            attention=AttentionView(module=attn, q=None, k=None, v=None, o=attn.c_proj, num_heads=heads,
                                    num_kv_heads=heads, head_dim=config.n_embd // heads, qkv=attn.c_attn),
            ffn=FFNView(module=block.mlp, up=block.mlp.c_fc, down=block.mlp.c_proj),
        ))
    return views


GPT2 = ArchSpec(
    name="gpt2", kind="decoder", model_types=("gpt2",),
    find_layers=_gpt2_layers,
    config_keys={"layers": "n_layer", "heads": "n_head", "intermediate": "n_inner", "hidden": "n_embd"},
    members="GPT-2", onnx_optimizer="gpt2",
)

SPECS = [GPT2]
