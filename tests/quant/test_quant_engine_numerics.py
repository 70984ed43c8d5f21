"""Numerics of the INT8 dynamic and weight-only layers against FP32, packing, and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autolite
from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.quant.common import sqnr_db, target_linears
from autolite.quant.formats import pack_int4, packed_group, unpack_int4
from autolite.quant.int8 import Int8Dynamic, available_kernels
from autolite.quant.layers import DynamicInt8Linear, WeightOnlyInt4Linear, WeightOnlyInt8Linear
from autolite.quant.weight_only import WeightOnly


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(256, 96)


@pytest.mark.parametrize("kernel", available_kernels())
def test_int8_dynamic_kernels_are_close_to_fp32(linear, kernel):
    x = torch.randn(3, 20, 256)
    layer = DynamicInt8Linear.from_float(linear, kernel)
    assert layer(x).shape == (3, 20, 96)
    assert sqnr_db(linear(x), layer(x)) > 30


@pytest.mark.parametrize("rows", [2, 40])
@pytest.mark.parametrize("group,symmetric", [(32, True), (64, False), (128, True)])
def test_int4_layer_sqnr_and_kernel_matches_dequant(linear, rows, group, symmetric):
    x = torch.randn(rows, 256)
    layer = WeightOnlyInt4Linear.from_float(linear, group, symmetric, kernel_max_rows=8)
    assert sqnr_db(linear.weight, layer.dequantize()) > 18
    assert sqnr_db(linear(x), layer(x)) > 17
    dense = copy.deepcopy(layer)
    dense.kernel_max_rows = 0  # force the dequantized path
    assert sqnr_db(dense(x), layer(x)) > 35  # kernel (BF16 activations) vs dequantized GEMM


def test_int8_weight_only_layer(linear):
    layer = WeightOnlyInt8Linear.from_float(linear, kernel_max_rows=8)
    for rows in (1, 30):
        x = torch.randn(rows, 256)
        assert sqnr_db(linear(x), layer(x)) > 38


def test_int4_pack_is_two_codes_per_byte():
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)


def test_packed_group_halves_until_it_divides():
    assert packed_group(576, 128) == 64
    assert packed_group(1536, 128) == 128
    assert packed_group(48, 64) is None


def test_encoder_cosine_and_head_kept_float(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    reference = copy.deepcopy(model)
    quantized = autolite.compress(model, [Int8Dynamic(kernel="x86", fallback=False)], tokenizer=tok, family=family)
    assert isinstance(quantized.classifier, nn.Linear)
    result = autolite.evaluate(quantized, tok, reference=reference, data=texts)
    assert result["cosine"] > 0.99


def test_decoder_weight_only_perplexity(load_model, texts):
    model, tok, family = load_model("tiny-llama")
    reference = copy.deepcopy(model)
    for config, bound in ((WeightOnly(bits=8, group_size=None), 0.01), (WeightOnly(bits=4, group_size=32), 0.10)):
        quantized = autolite.compress(copy.deepcopy(model), [config], tokenizer=tok, family=family)
        change = autolite.evaluate(quantized, tok, reference=reference, data=texts)["perplexity_rel_change"]
        assert abs(change) < bound


def test_include_head_and_skip(load_model):
    model, _, _ = load_model("tiny-gpt2")
    names = [n for n, _ in target_linears(model)]
    assert "lm_head" not in names and names
    assert "lm_head" in [n for n, _ in target_linears(model, include_head=True)]
    assert not [n for n, _ in target_linears(model, skip=[r"\.mlp\."]) if ".mlp." in n]


@pytest.mark.parametrize("entry,message", [
    ({"pass": "weight-only", "bits": 3}, "bits must be 4 or 8"),
    ({"pass": "weight-only", "bits": 8, "group_size": 64}, "per output channel"),
    ({"pass": "weight-only", "bits": 4, "group_size": 48}, "group_size must be one of"),
    ({"pass": "int8-dynamic", "kernel": "mkl"}, "kernel must be"),
    ({"pass": "int8-dynamic", "skip": ["("]}, "not a valid regex"),
])
def test_bad_configs_raise_one_line_errors(entry, message):
    with pytest.raises(RecipeError, match=message):
        PassConfig.from_dict(entry)


def test_unavailable_kernel_is_a_clear_error(load_model, monkeypatch):
    model, tok, family = load_model("tiny-bert")
    monkeypatch.setattr("autolite.quant.int8.available_kernels", lambda: ["int_mm"])
    with pytest.raises(BackendUnavailableError, match="not available"):
        autolite.compress(model, [Int8Dynamic(kernel="onednn")], tokenizer=tok, family=family)


def test_recorded_layers_must_exist(load_model):
    model, tok, family = load_model("tiny-bert")
    with pytest.raises(RecipeError, match="different model"):
        autolite.compress(model, [WeightOnly(layers=["nope.dense"])], tokenizer=tok, family=family)


@pytest.mark.parametrize("preset", ["int8-dynamic", "int8-static", "w8", "w4g32", "w4g64", "w4g128", "fast-dense"])
def test_engine_presets_resolve(preset):
    recipe = autolite.load_recipe(preset)
    assert recipe.name == preset and len(recipe.passes) == 1


def test_decoders_quantize_activations_per_token(load_model):
    from autolite.passes import PassContext

    model, tok, family = load_model("tiny-llama")
    ctx = PassContext(family=family, tokenizer=tok)
    quantized = autolite.compress(model, [Int8Dynamic(fallback=False)], tokenizer=tok, family=family, ctx=ctx)
    kernels = {m.kernel_name for m in quantized.modules() if isinstance(m, DynamicInt8Linear)}
    assert kernels == {"int_mm"}
    assert any("activations quantized per token" in note for note in ctx.notes)
    with pytest.raises(RecipeError, match="activations must be"):
        Int8Dynamic(activations="per-channel")
