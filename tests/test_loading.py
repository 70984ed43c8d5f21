import json
import shutil

import pytest
import torch

import autolite
from autolite.errors import CorruptWeightsError, ModelLoadError, UnsupportedArchitectureError


def test_random_preset_is_deterministic(texts):
    a, tok, family = autolite.load("random:tiny-bert")
    b, _, _ = autolite.load("random:tiny-bert")
    ids = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(a(**ids).logits, b(**ids).logits)
    assert family.name == "bert" and a.config.num_labels == 2


def test_minilm_is_the_real_model():
    model, tok, family = autolite.load("minilm")
    assert family.name == "bert" and family.kind == "encoder"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    ids = tok(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."],
              return_tensors="pt", padding=True)
    from autolite.eval.forward import mean_pool
    with torch.no_grad():
        emb = mean_pool(model(**ids).last_hidden_state, ids["attention_mask"])
    sim = torch.nn.functional.cosine_similarity
    assert sim(emb[0], emb[1], dim=0) > sim(emb[0], emb[2], dim=0) + 0.2  # real weights, not random


def test_smollm2_loads_and_generates():
    model, tok, family = autolite.load("smollm2")
    assert family.name == "llama" and model.config.num_key_value_heads == 3
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])


def test_hf_directory_round_trip(tmp_path, texts):
    model, tok, _ = autolite.load("random:tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _, family = autolite.load(str(tmp_path))
    ids = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, again(**ids).logits)
    assert family.name == "llama"


def test_missing_path():
    with pytest.raises(ModelLoadError, match="no model at"):
        autolite.load("/nonexistent/model")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        autolite.load(str(tmp_path))


def test_unknown_random_preset():
    with pytest.raises(ModelLoadError, match="tiny-bert"):
        autolite.load("random:nope")


def _saved_tiny(tmp_path):
    model, tok, _ = autolite.load("random:tiny-bert")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_truncated_safetensors(tmp_path):
    directory = _saved_tiny(tmp_path)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="corrupt or truncated"):
        autolite.load(str(directory))


def test_pickle_weights_are_refused(tmp_path):
    directory = _saved_tiny(tmp_path)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(CorruptWeightsError, match="pickle"):
        autolite.load(str(directory))


def test_unsupported_architecture_dir(tmp_path):
    directory = _saved_tiny(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "vit"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="supported families"):
        autolite.load(str(directory))


def test_gguf_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        autolite.load(str(tmp_path / "model.gguf"))


def test_a_model_dir_without_tokenizer_fails_at_load(tmp_path, load_model):
    import autolite
    from autolite.errors import ModelLoadError

    model, _, _ = load_model("tiny-bert")
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="tokenizer in .* is missing or empty"):
        autolite.load(tmp_path)


def test_bench_inputs_refuses_a_tokenizer_without_tokens(load_model):
    from autolite.errors import DataError
    from autolite.eval.bench import bench_inputs

    _, tok, family = load_model("tiny-bert")
    with pytest.raises(DataError, match="no tokens"):
        bench_inputs(tok, family, 2, 8, texts=["   "])
