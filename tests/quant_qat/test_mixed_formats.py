"""Engine formats in mixed precision: stored-size accounting, exact engine numerics, output-Fisher
sensitivities, allocation over formats, and the pass with per-layer formats saved and reloaded."""
import copy

import pytest
import torch

import autolite
from autolite.errors import RecipeError
from autolite.quant.common import transformer_linears
from autolite.quant.fakequant import dequantized
from autolite.quant.formats import ENGINE_FORMATS, format_bits, parse_format
from autolite.quant.mixed import MixedPrecision, allocate_bits, average_bits, unit_bits_table
from autolite.quant.sensitivity import Sensitivity, analyze
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst.",
         "Call me Ishmael.", "Alice was beginning to get very tired of sitting by her sister."]


def test_format_bits_count_scales_and_zeros():
    assert format_bits("w4g32", 576) == 4.75
    assert format_bits("w4g64", 576) == 4.375
    assert format_bits("w4g128", 512) == 4.1875
    assert format_bits("w4g128", 576) == 4.375  # 576 is not a multiple of 128: the engine uses group 64
    assert format_bits("w8", 576) == pytest.approx(8 + 16 / 576)
    assert format_bits(4, 576, group_size=64) == 4.375  # an int width is the engine's format at group_size
    assert format_bits(3, 576, group_size=64) == 3.25  # simulated: scales only
    assert parse_format("W4G64", 32) == (4, 64) and parse_format(8, 32) == (8, 32)
    with pytest.raises(RecipeError, match="unknown quantization format"):
        parse_format("int4", 64)


def test_dequantized_equals_engine_modules():
    linear = torch.nn.Linear(256, 48)
    for fmt, cls in (("w4g64", WeightOnlyInt4Linear), ("w8", WeightOnlyInt8Linear)):
        layer = (cls.from_float(linear, 64, True, 8) if cls is WeightOnlyInt4Linear
                 else cls.from_float(linear, kernel_max_rows=8))
        assert torch.equal(dequantized(linear.weight, fmt), layer.dequantize())


def test_output_fisher_orders_formats(load_model):
    model, tok, family = load_model("tiny-llama")
    table = analyze(model, tok, family, TEXTS, bits=ENGINE_FORMATS, max_texts=4, max_length=16,
                    gradient=False, measured=False, output=True)
    assert set(table.output) == set(transformer_linears(model, family))
    for row in table.output.values():
        assert 0 <= row["w8"] < row["w4g32"] and row["w8"] < row["w4g128"]
    assert sum(r["w4g32"] for r in table.output.values()) < sum(r["w4g128"] for r in table.output.values())
    again = Sensitivity.from_dict(table.to_dict())
    assert again.output == table.output and again.bits == list(ENGINE_FORMATS)


def test_allocation_over_formats_meets_budget_and_protects_sensitive():
    fmts = list(ENGINE_FORMATS)
    loss = {"sensitive": {"w8": 0.0, "w4g32": 4.0, "w4g64": 6.0, "w4g128": 9.0}}
    for i in range(9):
        loss[f"robust{i}"] = {"w8": 0.0, "w4g32": 0.01, "w4g64": 0.012, "w4g128": 0.015}
    numel = {u: 1000 for u in loss}
    bpw = {u: {f: format_bits(f, 512) for f in fmts} for u in loss}
    for budget in (4.1875, 4.5, 4.75, 5.0, 6.0):
        plan = allocate_bits(loss, numel, budget, bpw=bpw)
        assert average_bits(plan, numel, 64, bpw) <= budget + 1e-9
        for unit, fmt in plan.items():  # no single further upgrade still fits and helps
            for other in fmts:
                if loss[unit][other] < loss[unit][fmt]:
                    assert average_bits({**plan, unit: other}, numel, 64, bpw) > budget + 1e-9
    assert allocate_bits(loss, numel, 4.6, bpw=bpw)["sensitive"] == "w8"
    with pytest.raises(RecipeError, match="cannot be met"):
        allocate_bits(loss, numel, 4.0, bpw=bpw)


def test_mixed_pass_with_formats_saves_and_reloads(load_model, tmp_path):
    model, tok, family = load_model("tiny-llama")
    reference = copy.deepcopy(model)
    config = MixedPrecision(avg_bits=4.6, candidates=list(ENGINE_FORMATS), estimator="output", sensitivity_texts=4)
    small = autolite.compress(model, [config], calib=TEXTS, tokenizer=tok, family=family)
    plan = small.config.autolite["recipe"]["passes"][0]["bits"]
    assert set(plan.values()) <= set(ENGINE_FORMATS)
    members = {n: [n] for n in plan}
    bpw = unit_bits_table(reference, members, list(ENGINE_FORMATS), 64)
    numel = {n: m.weight.numel() for n, m in transformer_linears(reference, family).items()}
    assert average_bits(plan, numel, 64, bpw) <= 4.6
    groups = {m.group for m in small.modules() if isinstance(m, WeightOnlyInt4Linear)}
    assert groups <= {32, 64, 128}
    autolite.save_model(small, tok, tmp_path / "m")
    again, _, _ = autolite.load(tmp_path / "m")
    ids = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(again(**ids).logits, small(**ids).logits, atol=1e-5)
    with pytest.raises(RecipeError, match="formats like"):
        MixedPrecision(bits={".*": "w1g64"})
