"""BERT-like encoders: BERT, RoBERTa, XLM-RoBERTa, MiniLM (model_type bert), DistilBERT."""
from __future__ import annotations

from torch import nn

from autolite.arch.base import ArchSpec, AttentionView, FFNView, LayerView


def _bert_layers(base: nn.Module) -> list[LayerView]:
    config = base.config
    heads = config.num_attention_heads
    views = []
    for i, layer in enumerate(base.encoder.layer):
        attn = layer.attention
        views.append(LayerView(
            index=i, stack="encoder", module=layer,
            attention=AttentionView(module=attn, q=attn.self.query, k=attn.self.key, v=attn.self.value,
                                    o=attn.output.dense, num_heads=heads, num_kv_heads=heads,
                                    head_dim=attn.self.attention_head_size),
            ffn=FFNView(module=layer, up=layer.intermediate.dense, down=layer.output.dense),
        ))
    return views


def _distilbert_layers(base: nn.Module) -> list[LayerView]:
    config = base.config
    heads = config.n_heads
    views = []
    for i, layer in enumerate(base.transformer.layer):
        attn = layer.attention
        views.append(LayerView(
            index=i, stack="encoder", module=layer,
            attention=AttentionView(module=attn, q=attn.q_lin, k=attn.k_lin, v=attn.v_lin, o=attn.out_lin,
                                    num_heads=heads, num_kv_heads=heads, head_dim=config.dim // heads),
            ffn=FFNView(module=layer.ffn, up=layer.ffn.lin1, down=layer.ffn.lin2),
        ))
    return views


BERT = ArchSpec(
    name="bert", kind="encoder",
    model_types=("bert", "roberta", "xlm-roberta", "camembert"),
    find_layers=_bert_layers,
    config_keys={"layers": "num_hidden_layers", "heads": "num_attention_heads",
                 "intermediate": "intermediate_size", "hidden": "hidden_size"},
    members="BERT, RoBERTa, XLM-RoBERTa, MiniLM", onnx_optimizer="bert",
)

DISTILBERT = ArchSpec(
    name="distilbert", kind="encoder", model_types=("distilbert",),
    find_layers=_distilbert_layers,
    config_keys={"layers": "n_layers", "heads": "n_heads", "intermediate": "hidden_dim", "hidden": "dim"},
    members="DistilBERT", onnx_optimizer="bert",
)

SPECS = [BERT, DISTILBERT]
