import json

import pytest
import torch

import autolite
from autolite.errors import NumericsError
from autolite.export import UnsupportedExportError
from autolite.export.common import custom_modules

SLOW = pytest.mark.slow  # same families as above with another HF class: run with -m slow, and in the matrix
ALL = ["tiny-bert", "tiny-distilbert", "tiny-t5", "tiny-gpt2", "tiny-llama",
       pytest.param("tiny-roberta", marks=SLOW), pytest.param("tiny-qwen2", marks=SLOW),
       pytest.param("tiny-mistral", marks=SLOW)]


@pytest.mark.parametrize("preset", ALL)
def test_hf_round_trip_is_lossless_with_plain_transformers(tmp_path, load_model, fast_texts, preset):
    model, tok, family = load_model(preset)
    result = autolite.export(model, tok, tmp_path / "out", format="hf", max_texts=fast_texts)
    v = result.validation
    assert v.passed and v.rel_l2 < 1e-4 and v.cosine > 0.99999 and v.texts == fast_texts
    assert "transformers from_pretrained" in v.against
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if family.name == "llama":  # transformers 5 nests it; mlx-lm needs it on top
        assert config["rope_theta"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]  # no temporary directory left behind


def test_pruned_model_round_trips(tmp_path, load_model, pruned, fast_texts):
    model, tok, family = load_model("tiny-bert")
    pruned(model, family, keep=48)
    result = autolite.export(model, tok, tmp_path / "out", format="hf", max_texts=fast_texts)
    assert result.validation.rel_l2 < 1e-4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["intermediate_size"] == 48


def test_quantized_modules_reload_with_autolite(tmp_path, load_model, toy_int8, fast_texts):
    model, tok, family = load_model("tiny-bert")
    small = autolite.compress(model, [toy_int8()], family=family)
    assert custom_modules(small)
    result = autolite.export(small, tok, tmp_path / "out", format="hf", max_texts=fast_texts)
    assert result.validation.rel_l2 < 1e-4 and "autolite.load" in result.validation.against
    assert any("autolite.load" in note for note in result.notes)
    with pytest.raises(UnsupportedExportError, match="onnx supports float32"):
        autolite.export(small, tok, tmp_path / "onnx", format="onnx")
    assert not (tmp_path / "onnx").exists()


def test_validation_failure_is_an_error_and_writes_nothing(tmp_path, load_model, fast_texts):
    model, tok, family = load_model("tiny-bert")
    # a forward hook changes the in-memory model's outputs but is not saved: the reload must differ
    model.base_model.embeddings.register_forward_hook(lambda m, i, o: o + 0.5)
    with pytest.raises(NumericsError, match=r"hf export failed validation .*rel L2 [0-9.e-]+.*nothing was written"):
        autolite.export(model, tok, tmp_path / "out", format="hf", max_texts=fast_texts)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_option(tmp_path, load_model):
    model, tok, _ = load_model("tiny-bert")
    with pytest.raises(UnsupportedExportError, match="supported: hf, st, onnx, mlx"):
        autolite.export(model, tok, tmp_path / "out", format="tflite")
    with pytest.raises(UnsupportedExportError, match="has no option"):
        autolite.export(model, tok, tmp_path / "out", format="hf", bits=4)


def test_save_model_unchanged(tmp_path, load_model):
    model, tok, _ = load_model("tiny-llama")
    autolite.save_model(model, tok, tmp_path / "plain")
    assert "rope_theta" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    again, _, _ = autolite.load(str(tmp_path / "plain"))
    ids = torch.tensor([[101, 2000, 2001, 102]])
    assert torch.equal(again(ids).logits, model(ids).logits)


def test_head_pruned_bert_reloads_with_autolite_and_exports_to_st(tmp_path, load_model, fast_texts):
    from autolite.data import load_texts
    from autolite.prune.heads import PruneHeads

    model, tok, family = load_model("tiny-bert")
    small = autolite.compress(model, [PruneHeads(ratio=0.5, importance="magnitude", calib_samples=8)],
                              calib=load_texts(None, split="calib").texts[:8], tokenizer=tok, family=family)
    assert family.layers(small)[0].attention.q.weight.shape[0] == 32  # 2 of 4 heads left
    result = autolite.export(small, tok, tmp_path / "hf", format="hf", max_texts=fast_texts)
    assert result.validation.rel_l2 < 1e-4 and "autolite.load" in result.validation.against
    st = autolite.export(small, tok, tmp_path / "st", format="st", max_texts=fast_texts)
    assert st.validation.passed and any("trust_remote_code=True" in note for note in st.notes)
    from sentence_transformers import SentenceTransformer

    again = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True, local_files_only=True)
    assert again.encode(["a pruned encoder"]).shape == (1, 64)
