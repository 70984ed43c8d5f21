"""``random:<preset>``: real architectures with random weights, for speed work and tests.

Encoders get a 2-label sequence-classification head, decoders their LM head, T5 its LM head.
Dimensions follow the public checkpoints of the same name; ``tiny-*`` presets (hidden 32-64,
2 layers) are for tests. Every preset uses the bundled MiniLM WordPiece tokenizer, whose ids
(< 30522) fit every vocabulary below.
"""
from __future__ import annotations

from typing import Any

import torch
import transformers

from autolite.errors import ModelLoadError

_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}

# preset -> (transformers class name, config class name, config kwargs)
PRESETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert-base": ("BertForSequenceClassification", "BertConfig", {}),
    "roberta-large": ("RobertaForSequenceClassification", "RobertaConfig", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "t5-small": ("T5ForConditionalGeneration", "T5Config", dict(
        d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, vocab_size=32128,
        decoder_start_token_id=0, pad_token_id=0)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {}),
    "llama-1b": ("LlamaForCausalLM", "LlamaConfig", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "tiny-bert": ("BertForSequenceClassification", "BertConfig", dict(_TINY)),
    "tiny-roberta": ("RobertaForSequenceClassification", "RobertaConfig", dict(
        _TINY, vocab_size=30522, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "tiny-distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig", dict(
        dim=64, n_layers=2, n_heads=4, hidden_dim=128)),
    "tiny-t5": ("T5ForConditionalGeneration", "T5Config", dict(
        d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=30522,
        decoder_start_token_id=0, pad_token_id=0)),
    "tiny-gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=30522,
                                                         bos_token_id=101, eos_token_id=102,
                                                         n_positions=512)),
    "tiny-llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        _TINY, num_key_value_heads=2, vocab_size=30522, max_position_embeddings=512, tie_word_embeddings=False)),
    "tiny-qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(
        _TINY, num_key_value_heads=2, vocab_size=30522, max_position_embeddings=512)),
    "tiny-mistral": ("MistralForCausalLM", "MistralConfig", dict(
        _TINY, num_key_value_heads=2, vocab_size=30522, max_position_embeddings=512)),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def build_random(name: str, seed: int = 0) -> torch.nn.Module:
    """Instantiate preset ``name`` with random weights (deterministic for a given seed)."""
    if name not in PRESETS:
        raise ModelLoadError(f"unknown random preset '{name}'; presets: {', '.join(preset_names())}")
    model_cls_name, config_cls_name, kwargs = PRESETS[name]
    config = getattr(transformers, config_cls_name)(**kwargs)
    if "ForSequenceClassification" in model_cls_name:
        config.num_labels = 2
    config.name_or_path = f"random:{name}"
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls_name)(config)
    return model.eval()
