"""fast-dense with the ONNX Runtime candidate, compiled candidates without recompile-limit hits, opaque INT8
layers (no graph breaks), INT8 GEMM peak and dense floor in the roofline."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

import autolite
from autolite.passes import PassContext
from autolite.runtime import fast_dense
from autolite.runtime.fast_dense import FastDense
from autolite.runtime.ort import is_onnxruntime


def _fake_compare(speedups):
    """A stand-in for eval.compare.compare: fixed speedups, real fidelity of the candidate."""
    def compare(baseline, candidate, tokenizer, family, **kwargs):
        name = "ort" if is_onnxruntime(candidate) else "torch"
        fidelity = autolite.evaluate(candidate, tokenizer, reference=baseline, family=family, max_texts=8)
        return {"speedup": speedups[name], "candidate": {"median_ms": 10.0 / speedups[name]},
                "baseline": {"median_ms": 10.0}, "fidelity": fidelity}
    return compare


def test_fast_dense_picks_ort_by_measurement_and_reloads(load_model, texts, tmp_path, monkeypatch):
    monkeypatch.setattr("autolite.eval.compare.compare", _fake_compare({"ort": 3.0, "torch": 1.0}))
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, calib=texts)
    config = FastDense(batch=2, seq=16, runs=1, candidates=["fp32", "ort-int8"])
    chosen = autolite.compress(copy.deepcopy(model), [config], tokenizer=tok, family=family, ctx=ctx)
    assert is_onnxruntime(chosen)
    assert any("chose ort-int8" in note and "ort-int8: 3.0x" in note for note in ctx.notes)
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = chosen(**batch).logits
    autolite.save_model(chosen, tok, tmp_path / "fd")
    loaded, _, _ = autolite.load(tmp_path / "fd")
    assert is_onnxruntime(loaded)
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)


def test_fast_dense_skips_ort_for_a_decoder_and_says_why(load_model, texts, monkeypatch):
    monkeypatch.setattr("autolite.eval.compare.compare", _fake_compare({"ort": 3.0, "torch": 1.0}))
    model, tok, family = load_model("tiny-llama")
    result = fast_dense.measure(model, FastDense(batch=2, seq=16, runs=1, candidates=["fp32", "ort-int8"]),
                                PassContext(family=family, tokenizer=tok, calib=texts))
    assert result["chosen"] == "fp32"
    assert "encoders only" in result["measured"]["ort-int8"]["skipped"]


def _compiled_candidates_hit_limit(model, family, tok, caplog, reset: bool, monkeypatch) -> bool:
    if not reset:
        monkeypatch.setattr(fast_dense, "fresh_compile_cache", lambda configs: None)
    torch._dynamo.reset()
    ctx = PassContext(family=family, tokenizer=tok)
    inputs = tok(["a short text", "another one"], return_tensors="pt", padding=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"), torch.no_grad():
        for _ in range(torch._dynamo.config.recompile_limit + 1):
            candidate = fast_dense._build(model, [{"pass": "compile", "backend": "eager"}], ctx)
            candidate(**inputs)
    return "recompile_limit" in caplog.text or "cache_size_limit" in caplog.text


def test_compiled_candidates_do_not_hit_the_recompile_limit(load_model, caplog, monkeypatch):
    model, tok, family = load_model("tiny-bert")
    with torch._dynamo.config.patch(recompile_limit=1):  # same mechanism, fewer compiles
        assert not _compiled_candidates_hit_limit(model, family, tok, caplog, True, monkeypatch)
        assert _compiled_candidates_hit_limit(model, family, tok, caplog, False, monkeypatch)  # the reset matters
    torch._dynamo.reset()


def test_int8_engine_layers_compile_without_graph_breaks(load_model, texts):
    from autolite.quant.int8 import Int8Dynamic
    from autolite.runtime.opaque import make_opaque

    model, tok, family = load_model("tiny-bert")
    model = autolite.compress(model, [Int8Dynamic(kernel="fbgemm", fallback=False)], tokenizer=tok, family=family)
    batch = tok(texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        eager = model(**batch).logits
        assert make_opaque(model) > 0
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(**batch)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        assert torch.equal(model(**batch).logits, eager)


def test_roofline_measures_int8_peak_and_dense_floor(load_model):
    from autolite.runtime.roofline import dense_floor, floor_line, measure_peaks

    peaks = measure_peaks(size=256, copy_mb=8, repeats=1)
    assert peaks["int8_gemm_gops"] > 0 and peaks["int8_kernels"] and peaks["int8_over_fp32"] > 0
    model, _, _ = load_model("tiny-bert")
    floor = dense_floor({"rows": {}}, peaks, model, tokens=64)  # no linear ran (ONNX Runtime): static count
    layers = len(model.bert.encoder.layer)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    expected = 2 * 64 * layers * (4 * hidden * hidden + 2 * hidden * inter)
    assert expected <= floor["linear_gflop"] * 1e9 < expected * 1.2  # + pooler and classifier
    assert floor["int8_floor_ms"] == pytest.approx(floor["linear_gflop"] / peaks["int8_gemm_gops"] * 1e3)
    assert "x the INT8 floor" in floor_line(floor, eager_ms=10.0)
