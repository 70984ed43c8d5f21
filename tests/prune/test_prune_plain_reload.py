"""Saved pruned models load with plain transformers' Auto classes and give the same outputs as in memory."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

import autolite
from autolite.eval.forward import model_inputs, tokenize
from autolite.export.hf import export_hf
from autolite.passes import PassContext
from autolite.prune import PruneFFN, PruneHeads
from autolite.prune.remote import CODE_FILE, MODULES_KEY, load_with_transformers
from autolite.prune.structure import neuron_groups

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times.", "Call me Ishmael.",
         "Alice was beginning to get very tired of sitting by her sister on the bank."]
TASK_AUTO = {"tiny-bert": "AutoModelForSequenceClassification", "tiny-distilbert": "AutoModelForSequenceClassification",
             "tiny-gpt2": "AutoModelForCausalLM", "tiny-llama": "AutoModelForCausalLM"}


def _outputs(model, family, tok, bare=False):
    inputs = model_inputs(family, tokenize(tok, TEXTS), torch.device("cpu"))
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if bare else out.logits


def _pruned(name, load_model, ffn_scope="per_layer"):
    model, tok, family = load_model(name)
    recipe = [PruneHeads(ratio=0.5, importance="magnitude"),
              PruneFFN(ratio=0.4, importance="magnitude", scope=ffn_scope)]
    ctx = PassContext(family=family, tokenizer=tok, calib=TEXTS)
    return autolite.compress(model, recipe, tokenizer=tok, family=family, ctx=ctx), tok, family


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-distilbert", "tiny-gpt2", "tiny-llama"])
def test_heads_and_uneven_ffn_load_with_auto_classes(name, load_model, tmp_path):
    """Layers with different FFN sizes (global scope) need the modeling file, Llama included."""
    small, tok, family = _pruned(name, load_model, ffn_scope="global")
    assert len({g.size for g in neuron_groups(family, small)}) > 1
    expected = _outputs(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (tmp_path / "m" / CODE_FILE).is_file() and config[MODULES_KEY]
    plain = getattr(transformers, TASK_AUTO[name]).from_pretrained(str(tmp_path / "m"), trust_remote_code=True)
    assert isinstance(plain, getattr(transformers, type(small).__name__))
    torch.testing.assert_close(_outputs(plain.eval(), family, tok), expected, atol=1e-5, rtol=1e-5)
    bare = transformers.AutoModel.from_pretrained(str(tmp_path / "m"), trust_remote_code=True).eval()
    torch.testing.assert_close(_outputs(bare, family, tok, bare=True),
                               _outputs(small.base_model, family, tok, bare=True), atol=1e-5, rtol=1e-5)
    again, _, _ = autolite.load(str(tmp_path / "m"))  # autolite.load still replays the layout
    torch.testing.assert_close(_outputs(again, family, tok), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="(?i)size|shape"):  # without the modeling file: an error, never silence
        getattr(transformers, type(small).__name__).from_pretrained(str(tmp_path / "m"))


def test_uniform_llama_config_needs_no_remote_code(load_model, tmp_path):
    small, tok, family = _pruned("tiny-llama", load_model)
    autolite.save_model(small, tok, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "auto_map" not in config and MODULES_KEY not in config
    assert config["num_attention_heads"] == 2 and config["num_key_value_heads"] == 1


def test_export_hf_writes_the_modeling_file(load_model, tmp_path):
    small, tok, family = _pruned("tiny-bert", load_model)
    export_hf(small, tok, tmp_path / "m", family=family, max_texts=8)  # validated (via autolite.load)
    plain = transformers.AutoModel.from_pretrained(str(tmp_path / "m"), trust_remote_code=True).eval()
    torch.testing.assert_close(_outputs(plain, family, tok, bare=True),
                               _outputs(small.base_model, family, tok, bare=True), atol=1e-5, rtol=1e-5)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    task = load_with_transformers(tmp_path / "m", config)  # the Auto class of the saved head
    torch.testing.assert_close(_outputs(task, family, tok), _outputs(small, family, tok), atol=1e-5, rtol=1e-5)


def test_resaving_a_remote_loaded_model_keeps_it_loadable(load_model, tmp_path):
    small, tok, family = _pruned("tiny-bert", load_model, ffn_scope="global")
    expected = _outputs(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "a")
    loaded, _, _ = autolite.load(str(tmp_path / "a"))
    autolite.save_model(loaded, tok, tmp_path / "b")
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "b"),
                                                                          trust_remote_code=True).eval()
    torch.testing.assert_close(_outputs(plain, family, tok), expected, atol=1e-5, rtol=1e-5)
