"""fast-dense: measured choice among candidates, cached per machine/model/shape, replayed on load."""
from __future__ import annotations

import json

import pytest
import torch

import autolite
from autolite.errors import RecipeError
from autolite.passes import PassContext
from autolite.quant.layers import DynamicInt8Linear
from autolite.runtime.fast_dense import FastDense, cache_key, cache_path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fast_dense_measures_caches_and_reloads(load_model, cache_dir, tmp_path, texts, monkeypatch):
    monkeypatch.setattr("autolite.quant.int8.available_kernels", lambda: ["fbgemm"])  # fewer timings
    model, tok, family = load_model("tiny-bert")
    config = FastDense(batch=2, seq=16, runs=1, candidates=["fp32", "int8-dynamic"])
    key = cache_key(model, config)
    ctx = PassContext(family=family, tokenizer=tok, calib=texts)
    chosen_model = autolite.compress(model, [config], tokenizer=tok, family=family, ctx=ctx)
    decision = json.loads(cache_path(key).read_text())
    assert set(decision["measured"]) == {"fp32", "int8-dynamic"}
    assert decision["chosen"] in ("fp32", "int8-dynamic")
    # the chosen candidate's own notes may follow the decision note
    assert any("fast-dense at batch 2 x seq 16 chose" in note for note in ctx.notes)
    assert decision["measured"]["int8-dynamic"]["cosine"] > 0.99
    assert all(m["search_s"] > 0 for m in decision["measured"].values())  # what each candidate cost to try
    # A second run with the same model/shape reads the cache instead of measuring.
    model2, _, _ = load_model("tiny-bert")
    ctx2 = PassContext(family=family, tokenizer=tok, calib=texts)
    autolite.compress(model2, [FastDense(batch=2, seq=16, runs=1, candidates=["fp32", "int8-dynamic"])],
                      tokenizer=tok, family=family, ctx=ctx2)
    assert any("[cached" in note for note in ctx2.notes)
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = chosen_model(**batch).logits
    autolite.save_model(chosen_model, tok, tmp_path / "fd")
    loaded, _, _ = autolite.load(tmp_path / "fd")
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)
    quantized = any(isinstance(m, DynamicInt8Linear) for m in loaded.modules())
    # The int8 pass may keep every layer of a tiny model FP32 when its kernels measure slower; the reload
    # must rebuild exactly the layers the chosen model quantized.
    assert quantized == any(isinstance(m, DynamicInt8Linear) for m in chosen_model.modules())
    assert not quantized or decision["chosen"] == "int8-dynamic"


def test_fast_dense_rejects_unknown_candidate():
    with pytest.raises(RecipeError, match="unknown recipe"):
        FastDense(candidates=["nope"])
