"""Roofline: measured peaks are positive and every linear kind of a quantized model gets a row."""
from __future__ import annotations

import autolite
from autolite.eval.bench import bench_inputs, forward_fn
from autolite.quant.weight_only import WeightOnly
from autolite.runtime.roofline import measure_peaks, profile, roofline_rows


def test_roofline_rows_per_layer_kind(load_model):
    model, tok, family = load_model("tiny-llama")
    model = autolite.compress(model, [WeightOnly(bits=4, group_size=32)], tokenizer=tok, family=family)
    peaks = measure_peaks(size=256, copy_mb=8, repeats=1)
    assert peaks["gemm_gflops"] > 0 and peaks["bandwidth_gbs"] > 0
    result = profile(model, forward_fn(model, family, bench_inputs(tok, family, 2, 16)), runs=1)
    assert set(result["rows"]) == {"weight-only int4", "linear float32"}  # lm_head stays float
    seconds, flops, nbytes = result["rows"]["weight-only int4"]
    layers = len(family.layers(model)) * 7
    assert flops > 0 and seconds > 0 and nbytes < layers * 64 * 128  # packed: well under FP32 bytes
    rows = roofline_rows(result, peaks)
    assert rows[-1][0].startswith("other") and len(rows) == 3
