"""INT8 static quantization: calibration observers, SmoothQuant, per-layer error, bad data, round trip."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.errors import DataError, NumericsError
from autolite.passes import PassContext
from autolite.quant.calibrate import ActivationStats, clip_value
from autolite.quant.int8_static import Int8Static, smooth_factors
from autolite.quant.layers import StaticInt8Linear

CALIB = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.",
         "Call me Ishmael.", "Alice was beginning to get very tired of sitting by her sister on the bank."]


def _compress(model, tok, family, config, calib=CALIB, fallback=False):
    config.fallback = fallback  # tiny shapes: INT8 may time slower than FP32; numerics tests want INT8
    ctx = PassContext(family=family, tokenizer=tok, calib=calib)
    return autolite.compress(model, [config], tokenizer=tok, family=family, ctx=ctx), ctx


@pytest.mark.parametrize("config", [dict(observer="minmax"), dict(observer="mse"),
                                    dict(observer="percentile", smoothquant=0.5)])
def test_static_int8_encoder_cosine_and_notes(load_model, texts, config):
    model, tok, family = load_model("tiny-bert")
    reference = copy.deepcopy(model)
    quantized, ctx = _compress(model, tok, family, Int8Static(**config))
    assert sum(isinstance(m, StaticInt8Linear) for m in quantized.modules()) == 12 + 1  # 2 layers x 6 + pooler
    assert autolite.evaluate(quantized, tok, reference=reference, data=texts)["cosine"] > 0.999
    assert any("per-layer output SQNR mean" in note and "worst:" in note for note in ctx.notes)


def test_static_round_trip_is_bit_identical(load_model, tmp_path, texts):
    model, tok, family = load_model("tiny-llama")
    quantized, _ = _compress(model, tok, family, Int8Static(observer="mse", smoothquant=0.8))
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = quantized(**batch).logits
    autolite.save_model(quantized, tok, tmp_path / "s")
    loaded, _, _ = autolite.load(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)


def test_observers_order_clip_values():
    stats = ActivationStats()
    x = torch.randn(512, 16)
    x[0, 0] = 80.0  # one outlier
    stats.update(x, "layer")
    minmax, pct = clip_value(stats, "minmax"), clip_value(stats, "percentile", 99.0)
    assert minmax == pytest.approx(80.0) and pct < 5.0
    assert clip_value(stats, "mse") < minmax


def test_smooth_factors_balance_activation_and_weight():
    stats = ActivationStats()
    stats.update(torch.tensor([[8.0, 1.0]]), "layer")
    linear = torch.nn.Linear(2, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.5, 2.0], [0.1, 0.1], [0.2, 0.3]]))
    s = smooth_factors(stats, linear, 0.5)
    assert torch.allclose(s, torch.tensor([(8.0 / 0.5) ** 0.5, (1.0 / 2.0) ** 0.5]))


def test_empty_calibration_is_a_clear_error(load_model):
    model, tok, family = load_model("tiny-bert")
    with pytest.raises(DataError, match="needs calibration texts"):
        _compress(model, tok, family, Int8Static(), calib=[])


def test_nan_in_calibration_names_the_layer(load_model):
    model, tok, family = load_model("tiny-bert")
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.output.dense.weight[0, 0] = float("nan")
    with pytest.raises(NumericsError, match="layer 'bert.encoder.layer.0.attention.output.LayerNorm'|"
                                            r"layer 'bert\.encoder\.layer\.0\.intermediate\.dense'"):
        _compress(model, tok, family, Int8Static())


def test_auto_observer_and_min_sqnr_keep_bad_layers_float(load_model):
    model, tok, family = load_model("tiny-bert")
    quantized, ctx = _compress(model, tok, family, Int8Static(observer="auto", min_sqnr=1000.0))
    assert not any(isinstance(m, StaticInt8Linear) for m in quantized.modules())
    assert any("kept FP32 (output SQNR below 1000.0 dB)" in note for note in ctx.notes)


def test_shapes_slower_in_int8_stay_fp32(load_model, monkeypatch):
    from autolite.quant import common

    timings = iter([1.0, 2.0] * 50)  # per shape: FP32 timed first, then INT8 (slower)
    monkeypatch.setattr(common, "time_ms", lambda fn, **kw: next(timings))
    model, tok, family = load_model("tiny-bert")
    quantized, ctx = _compress(model, tok, family, Int8Static(), fallback=True)
    assert not any(isinstance(m, StaticInt8Linear) for m in quantized.modules())
    assert any("layers stay FP32 (INT8 slower at 256 tokens" in note for note in ctx.notes)
