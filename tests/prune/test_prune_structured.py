"""prune-heads / prune-ffn: weights really shrink, the config stays true, saved models reload identically."""
from __future__ import annotations

import pytest
import torch
import transformers

import autolite
from autolite.errors import RecipeError
from autolite.eval.forward import model_inputs, tokenize
from autolite.passes import PassContext
from autolite.prune import PruneFFN, PruneHeads
from autolite.prune.structure import head_groups, neuron_groups
from autolite.prune.remote import CODE_FILE
from autolite.prune.surgery import config_expresses

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times.", "Call me Ishmael.",
         "Alice was beginning to get very tired of sitting by her sister on the bank."]
ALL = ["tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-t5", "tiny-gpt2", "tiny-llama", "tiny-qwen2",
       "tiny-mistral"]
PLAIN_HEADS = {"tiny-t5", "tiny-llama", "tiny-qwen2", "tiny-mistral"}  # config.json alone says fewer heads


def _logits(model, family, tok):
    inputs = model_inputs(family, tokenize(tok, TEXTS), torch.device("cpu"))
    with torch.no_grad():
        return model(**inputs).logits


def _prune(name, load_model, recipe):
    model, tok, family = load_model(name)
    before = sum(p.numel() for p in model.parameters())
    shapes = [(g.num_heads, g.num_kv_heads) for g in head_groups(family, model)]
    sizes = [g.size for g in neuron_groups(family, model)]
    ctx = PassContext(family=family, tokenizer=tok, calib=TEXTS * 2)
    small = autolite.compress(model, recipe, tokenizer=tok, family=family, ctx=ctx)
    return small, tok, family, before, shapes, sizes, ctx


@pytest.mark.parametrize("name", ALL)
def test_heads_and_ffn_shrink_and_reload(name, load_model, tmp_path):
    recipe = [PruneHeads(ratio=0.5, importance="magnitude"), PruneFFN(ratio=0.5, importance="magnitude")]
    small, tok, family, before, shapes, sizes, ctx = _prune(name, load_model, recipe)
    assert sum(p.numel() for p in small.parameters()) < before
    for group, (heads, kv) in zip(head_groups(family, small), shapes):
        assert group.num_heads == heads // 2 and group.num_kv_heads == kv // 2
    assert [g.size for g in neuron_groups(family, small)] == [s // 2 for s in sizes]
    expected = _logits(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "m")
    again, _, _ = autolite.load(str(tmp_path / "m"))
    torch.testing.assert_close(_logits(again, family, tok), expected, atol=1e-5, rtol=1e-4)
    assert config_expresses(family, small) == (name in PLAIN_HEADS)
    # plain transformers: from config.json alone where it can say the sizes, else through the saved modeling file
    remote = name not in PLAIN_HEADS
    assert (tmp_path / "m" / CODE_FILE).exists() == remote
    auto = transformers.AutoModelForSequenceClassification if family.kind == "encoder" else \
        transformers.AutoModelForSeq2SeqLM if family.kind == "seq2seq" else transformers.AutoModelForCausalLM
    plain = auto.from_pretrained(str(tmp_path / "m"), trust_remote_code=remote).eval()
    assert isinstance(plain, getattr(transformers, type(small).__name__))
    torch.testing.assert_close(_logits(plain, family, tok), expected, atol=1e-5, rtol=1e-5)
    assert any("prune-heads: removed" in note for note in ctx.notes)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-distilbert", "tiny-gpt2"])
def test_ffn_only_reloads_with_plain_transformers(name, load_model, tmp_path):
    small, tok, family, *_ = _prune(name, load_model, [PruneFFN(ratio=0.5, importance="taylor", round_to=16)])
    assert all(g.size % 16 == 0 for g in neuron_groups(family, small))
    expected = _logits(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "m")
    plain = transformers.AutoModel.from_pretrained(str(tmp_path / "m"))  # the bare model loads too
    assert plain is not None
    cls = getattr(transformers, type(small).__name__)
    torch.testing.assert_close(_logits(cls.from_pretrained(str(tmp_path / "m")).eval(), family, tok), expected,
                               atol=1e-5, rtol=1e-4)


def test_global_scope_gives_uneven_layers_that_reload(load_model, tmp_path):
    model, tok, family = load_model("tiny-bert")
    with torch.no_grad():  # make layer 1's FFN clearly less important than layer 0's
        family.layers(model)[1].ffn.down.weight.mul_(0.01)
    ctx = PassContext(family=family, tokenizer=tok, calib=TEXTS)
    small = autolite.compress(model, [PruneFFN(ratio=0.5, importance="magnitude", scope="global")],
                              tokenizer=tok, family=family, ctx=ctx)
    sizes = [g.size for g in neuron_groups(family, small)]
    assert sizes[0] > sizes[1] and sum(sizes) == 128
    expected = _logits(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "m")
    again, _, _ = autolite.load(str(tmp_path / "m"))
    torch.testing.assert_close(_logits(again, family, tok), expected, atol=1e-5, rtol=1e-4)


def test_skip_layers_leave_a_layer_whole(load_model):
    small, _, family, *_ = _prune("tiny-bert", load_model, [PruneHeads(ratio=0.5, importance="magnitude",
                                                                       skip_layers=[0])])
    assert [g.num_heads for g in head_groups(family, small)] == [4, 2]


@pytest.mark.parametrize("kwargs,message", [
    (dict(ratio=1.0), "ratio must be in [0, 1)"),
    (dict(ratio=-0.1), "ratio must be in [0, 1)"),
    (dict(ratio=0.3, importance="nope"), "unknown importance"),
    (dict(ratio=0.3, scope="everywhere"), "scope must be one of"),
    (dict(ratio=0.3, round_to=0), "round_to must be an integer"),
])
def test_bad_config_is_a_recipe_error(kwargs, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace(")", r"\)")):
        PruneHeads(**kwargs)


def test_bad_config_from_yaml_dict():
    with pytest.raises(RecipeError, match="scores heads only"):
        autolite.Recipe.from_dict({"passes": [{"pass": "prune-ffn", "ratio": 0.3, "importance": "attention"}]})


@pytest.mark.parametrize("name,config,message", [
    ("tiny-bert", PruneHeads(ratio=0.9, importance="magnitude"), "would leave 0 of 4 heads"),
    ("tiny-llama", PruneHeads(ratio=0.1, importance="magnitude"), "removes no whole KV group"),
    ("tiny-llama", PruneHeads(ratio=0.5, importance="magnitude", round_to=3), "multiple of its KV group size"),
    ("tiny-t5", PruneHeads(ratio=0.5, importance="magnitude", skip_layers=[1]), "share one relative-position"),
])
def test_impossible_cuts_are_recipe_errors(name, config, message, load_model):
    model, tok, family = load_model(name)
    with pytest.raises(RecipeError, match=message):
        autolite.compress(model, [config], tokenizer=tok, family=family, calib=TEXTS)


@pytest.mark.parametrize("config", [PruneHeads(ratio=0.5), PruneFFN(ratio=0.5)])
def test_family_without_a_head_map_is_a_clear_error(config, tokenizer):
    from autolite.errors import UnsupportedArchitectureError

    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=30522))
    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox' is not supported; supported families: bert"):
        autolite.compress(model, [config], tokenizer=tokenizer, calib=TEXTS)


def test_prune_ffn_ratio_outside_range_is_a_recipe_error():
    for ratio in (1.0, 1.5, -0.2):
        with pytest.raises(RecipeError, match=r"prune-ffn: ratio must be in \[0, 1\)"):
            PruneFFN(ratio=ratio)
