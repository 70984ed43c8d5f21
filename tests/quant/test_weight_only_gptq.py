"""GPTQ for the weight-only INT4 pass: lower output error than RTN, same packed format, round trips, bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autolite
from autolite.config import PassConfig
from autolite.errors import DataError, NumericsError, RecipeError
from autolite.passes import applied_recipe
from autolite.eval.forward import run_model, tokenize
from autolite.quant.common import sqnr_db
from autolite.quant.gptq import HessianAccumulator, gptq_quantize
from autolite.quant.formats import quantize_int4, unpack_int4
from autolite.quant.layers import WeightOnlyInt4Linear
from autolite.quant.weight_only import WeightOnly

CALIB = ["The quick brown fox jumps over the lazy dog near the river bank.", "It was the best of times, it was "
         "the worst of times.", "Call me Ishmael. Some years ago, never mind how long precisely.",
         "Alice was beginning to get very tired of sitting by her sister on the bank."] * 4


def _outlier_inputs(rows: int = 512, width: int = 128) -> torch.Tensor:
    """Correlated activations (low rank + noise, as hidden states are) with planted outlier channels."""
    torch.manual_seed(0)
    x = torch.randn(rows, 48) @ torch.randn(48, width) + 0.1 * torch.randn(rows, width)
    x[:, :4] *= 10.0
    return x


def _dequant(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    out, width = q.shape
    codes = q.float().view(out, -1, group) - zero.float()[..., None]
    return (codes * scale.float()[..., None]).view(out, width)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lowers_layer_output_error_vs_rtn(act_order, symmetric):
    x = _outlier_inputs()
    weight = torch.randn(64, 128) * 0.05
    acc = HessianAccumulator(128, "probe")
    acc.add(x)
    reference = x @ weight.T
    rtn = _dequant(*quantize_int4(weight, 32, symmetric), 32)
    gptq = _dequant(*gptq_quantize(weight, acc.hessian(), 32, symmetric, act_order=act_order), 32)
    err_rtn = (x @ rtn.T - reference).pow(2).mean()
    err_gptq = (x @ gptq.T - reference).pow(2).mean()
    assert err_gptq < 0.3 * err_rtn, (float(err_gptq), float(err_rtn))


def test_gptq_codes_fit_the_packed_layer_and_kernel():
    x = _outlier_inputs(256, 128)
    linear = nn.Linear(128, 48)
    acc = HessianAccumulator(128, "probe")
    acc.add(x)
    q, scale, zero = gptq_quantize(linear.weight, acc.hessian(), 32, symmetric=False)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.dtype == torch.bfloat16 and zero.dtype == torch.uint8
    layer = WeightOnlyInt4Linear.from_codes(linear, 32, 8, q, scale, zero)
    assert torch.equal(unpack_int4(layer.weight_packed), q)
    assert torch.equal(layer.dequantize(), _dequant(q, scale, zero, 32))
    rows = x[:4]
    dense = copy.deepcopy(layer)
    dense.kernel_max_rows = 0
    assert sqnr_db(dense(rows), layer(rows)) > 35  # the INT4 kernel runs the GPTQ codes unchanged
    assert sqnr_db(linear(rows), layer(rows)) > 15


def _logits(model, tok, family):
    return run_model(model, family, tokenize(tok, CALIB[:4], 32)).logits


def test_sequential_gptq_beats_rtn_and_round_trips(load_model, tmp_path):
    model, tok, family = load_model("tiny-llama")
    reference = _logits(model, tok, family)
    errors = {}
    for method in ("rtn", "gptq"):
        config = WeightOnly(bits=4, group_size=32, symmetric=False, method=method, calib_tokens=512, calib_seq=64)
        quantized = autolite.compress(copy.deepcopy(model), [config], calib=CALIB, tokenizer=tok, family=family)
        errors[method] = float((_logits(quantized, tok, family) - reference).pow(2).mean())
    assert errors["gptq"] < errors["rtn"], errors
    layers = applied_recipe(quantized).passes[0].layers  # the handler records its layers in a copy of config
    assert all(isinstance(quantized.get_submodule(n), WeightOnlyInt4Linear) for n in layers)
    assert len(layers) == 14  # 2 blocks x (q, k, v, o, gate, up, down)
    before = _logits(quantized, tok, family)
    autolite.save_model(quantized, tok, tmp_path / "gptq")
    loaded, tok2, family2 = autolite.load(tmp_path / "gptq")
    assert torch.equal(before, _logits(loaded, tok2, family2))


def test_empty_calibration_is_a_clear_error(load_model):
    model, tok, family = load_model("tiny-llama")
    for calib in ([], ["", "  "]):
        with pytest.raises(DataError, match="no calibration text"):
            autolite.compress(model, [WeightOnly(method="gptq")], calib=calib, tokenizer=tok, family=family)


def test_missing_tokenizer_is_a_clear_error(load_model):
    model, _, family = load_model("tiny-llama")
    with pytest.raises(DataError, match="tokenizer"):
        autolite.compress(model, [WeightOnly(method="gptq")], calib=CALIB, family=family)


def test_nan_activations_name_the_layer(load_model):
    model, tok, family = load_model("tiny-llama")
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight.fill_(float("nan"))
    with pytest.raises(NumericsError, match=r"model\.layers\.1\.self_attn\.q_proj"):
        autolite.compress(model, [WeightOnly(method="gptq", calib_tokens=256)], calib=CALIB, tokenizer=tok,
                          family=family)


@pytest.mark.parametrize("entry,message", [
    ({"pass": "weight-only", "method": "awq2"}, "method must be one of"),
    ({"pass": "weight-only", "bits": 8, "group_size": None, "method": "gptq"}, "gptq is for 4-bit"),
    ({"pass": "weight-only", "damp": 0}, "damp must be"),
    ({"pass": "weight-only", "calib_tokens": 0}, "calib_tokens must be"),
])
def test_bad_gptq_options_raise(entry, message):
    with pytest.raises(RecipeError, match=message):
        PassConfig.from_dict(entry)


def test_old_recipes_keep_rtn():
    config = PassConfig.from_dict({"pass": "weight-only", "bits": 4, "group_size": 64})
    assert config.method == "rtn" and config.embedding is False
