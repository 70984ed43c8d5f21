"""ONNX Runtime backend: outputs match torch, INT8 keeps fidelity, save -> load is bit-identical, clear errors."""
from __future__ import annotations

import copy
import sys

import pytest
import torch

import autolite
from autolite.errors import BackendUnavailableError
from autolite.runtime.ort import OnnxRuntime, is_onnxruntime


def _padded(tok, texts):
    return tok(texts, return_tensors="pt", padding=True)


def test_ort_fp32_matches_torch_with_padding(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    ort_model = autolite.compress(copy.deepcopy(model), [OnnxRuntime(precision="fp32")], tokenizer=tok,
                                  family=family)
    assert is_onnxruntime(ort_model)
    batch = _padded(tok, texts)
    assert batch["attention_mask"].min() == 0  # padding exercised
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True)
        got = ort_model(**batch, output_hidden_states=True)
    assert type(got).__name__ == "SequenceClassifierOutput"
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got.hidden_states[-1][mask], ref.hidden_states[-1][mask], atol=1e-4, rtol=1e-4)


def test_ort_int8_fidelity_and_reload_is_identical(load_model, texts, tmp_path, cache_dir):
    model, tok, family = load_model("tiny-bert")
    ctx = autolite.passes.PassContext(family=family, tokenizer=tok)
    ort_model = autolite.compress(copy.deepcopy(model), "ort-int8", tokenizer=tok, family=family, ctx=ctx)
    assert any("quantize_dynamic int8 (per-channel)" in note for note in ctx.notes)
    assert autolite.evaluate(ort_model, tok, reference=model, data=texts, family=family)["cosine"] > 0.99
    batch = _padded(tok, texts)
    with torch.no_grad():
        before = ort_model(**batch).logits
    autolite.save_model(ort_model, tok, tmp_path / "ort")
    for graph in cache_dir.glob("onnxruntime/*.onnx"):
        graph.unlink()  # force the deterministic rebuild from the stored FP32 weights
    loaded, _, _ = autolite.load(tmp_path / "ort")
    assert is_onnxruntime(loaded)
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)


def test_base_encoder_returns_last_hidden_state(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    base = copy.deepcopy(model.bert)
    ort_model = autolite.compress(copy.deepcopy(base), [OnnxRuntime(precision="fp32")], tokenizer=tok,
                                  family=family)
    batch = _padded(tok, texts[:2])
    with torch.no_grad():
        got = ort_model(**batch)
        ref = base(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got.last_hidden_state[mask], ref.last_hidden_state[mask], atol=1e-4, rtol=1e-4)


def test_decoder_is_refused_clearly(load_model):
    model, tok, family = load_model("tiny-llama")
    with pytest.raises(BackendUnavailableError, match="encoders only"):
        autolite.compress(model, "ort-int8", tokenizer=tok, family=family)


def test_missing_onnxruntime_is_a_clear_error(load_model, monkeypatch):
    model, tok, family = load_model("tiny-bert")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match="pip install onnx onnxruntime"):
        autolite.compress(model, "ort-fp32", tokenizer=tok, family=family)


def test_nonzero_segment_ids_are_refused(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    ort_model = autolite.compress(model, "ort-fp32", tokenizer=tok, family=family)
    batch = _padded(tok, texts[:2])
    with pytest.raises(BackendUnavailableError, match="token_type_ids"):
        ort_model(**{**batch, "token_type_ids": torch.ones_like(batch["input_ids"])})
