"""ONNX Runtime calibrated static INT8 (QDQ): fidelity, the calibration ids recorded and a bit-identical
rebuild on load; external-engine models hold no resident FP32 torch copy and report the memory they hold."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.errors import RecipeError
from autolite.eval.bench import model_size
from autolite.passes import PassContext
from autolite.runtime.external import MAPPED_ATTR
from autolite.runtime.ort import OnnxRuntime, is_onnxruntime


def test_static_int8_fidelity_and_reload_is_identical(load_model, texts, tmp_path, cache_dir):
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, calib=texts)
    config = OnnxRuntime(precision="int8-static")
    ort_model = autolite.compress(copy.deepcopy(model), [config], tokenizer=tok, family=family, ctx=ctx)
    assert any("quantize_static int8 QDQ" in note and "from 5 calibration texts" in note for note in ctx.notes)
    assert autolite.evaluate(ort_model, tok, reference=model, data=texts, family=family)["cosine"] > 0.99
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = ort_model(**batch).logits
    autolite.save_model(ort_model, tok, tmp_path / "static")
    for graph in cache_dir.glob("onnxruntime/*.onnx"):
        graph.unlink()  # rebuilt from the stored weights and the recorded calibration ids, no tokenizer
    loaded, _, _ = autolite.load(tmp_path / "static")
    assert is_onnxruntime(loaded)
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)


def test_weights_are_mapped_and_memory_held_is_reported(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    ort_model = autolite.compress(copy.deepcopy(model), "ort-int8", tokenizer=tok, family=family)
    assert getattr(ort_model, MAPPED_ATTR)
    weights_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    held, params = model_size(ort_model)
    assert params == sum(p.numel() for p in model.parameters())
    assert held != pytest.approx(weights_mb, rel=0.01)  # not the FP32 state dict: the session's own memory
    torch.testing.assert_close(ort_model.state_dict()["bert.pooler.dense.weight"],
                               model.state_dict()["bert.pooler.dense.weight"], rtol=0, atol=0)


def test_bad_settings_are_recipe_errors():
    with pytest.raises(RecipeError, match="precision must be one of"):
        OnnxRuntime(precision="int4")
    with pytest.raises(RecipeError, match="calib_samples"):
        OnnxRuntime(precision="int8-static", calib_samples=0)
