import pytest
import torch
import transformers

from autolite.arch import family_for, family_of, supported_model_types
from autolite.errors import UnsupportedArchitectureError


def _out_features(module):
    return module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.weight.shape[1]


def test_every_tiny_preset_maps_its_layers(tiny):
    model, tokenizer, family = tiny
    layers = family.layers(model)
    config = model.config
    expected_layers = getattr(config, family.config_keys["layers"])
    if family.kind == "seq2seq":
        expected_layers *= 2  # encoder + decoder stacks
    assert len(layers) == expected_layers
    for view in layers:
        attn = view.attention
        if attn.qkv is not None:
            assert _out_features(attn.qkv) == 3 * attn.num_heads * attn.head_dim
        else:
            assert _out_features(attn.q) == attn.num_heads * attn.head_dim
            assert _out_features(attn.k) == attn.num_kv_heads * attn.head_dim
        assert attn.num_heads % attn.num_kv_heads == 0
        assert view.ffn.down is not None


def test_decoder_cross_attention_only_in_t5_decoder(load_model):
    model, _, family = load_model("tiny-t5")
    stacks = {(v.stack, v.cross_attention is not None) for v in family.layers(model)}
    assert stacks == {("encoder", False), ("decoder", True)}


def test_gqa_heads_reported(load_model):
    model, _, family = load_model("tiny-llama")
    view = family.layers(model)[0].attention
    assert (view.num_heads, view.num_kv_heads) == (4, 2)


def test_unsupported_architecture_names_supported_families():
    with pytest.raises(UnsupportedArchitectureError) as info:
        family_for("vit")
    message = str(info.value)
    assert "'vit'" in message and "bert" in message and "llama" in message
    assert "\n" not in message


def test_supported_model_types_cover_the_issue_families():
    types = set(supported_model_types())
    assert {"bert", "roberta", "distilbert", "t5", "gpt2", "llama", "qwen2", "mistral", "glm"} <= types


def test_the_encoder_stack_of_a_seq2seq_family_is_an_encoder():
    config = transformers.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=128)
    full, encoder = transformers.T5ForConditionalGeneration(config), transformers.T5EncoderModel(config)
    assert family_of(full).kind == "seq2seq"
    assert (family_of(encoder).name, family_of(encoder).kind) == ("t5-encoder", "encoder")
    assert family_for("t5", {"architectures": ["T5EncoderModel"]}).kind == "encoder"  # a saved encoder stack
    assert len(family_of(encoder).layers(encoder)) == 2  # its encoder layers only
