"""Opaque INT8 layers (no graph breaks), INT8 GEMM peak and dense floor in the roofline (the fast-dense search
itself: tests/runtime/test_fast_dense.py)."""
from __future__ import annotations

import pytest
import torch

import autolite


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
