"""Sensitivity analysis on tiny models, and the mixed_precision pass end to end."""
import copy

import pytest
import torch

import autolite
from autolite.quant.mixed import MixedPrecision, average_bits
from autolite.quant.common import transformer_linears
from autolite.quant.fakequant import fake_quantize_weight
from autolite.quant.sensitivity import Sensitivity, analyze

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst.",
         "Call me Ishmael.", "Alice was beginning to get very tired of sitting by her sister."]


def test_fake_quantize_weight_error_shrinks_with_bits():
    w = torch.randn(16, 128)
    errors = [float((fake_quantize_weight(w, b, 64) - w).abs().mean()) for b in (2, 3, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01
    q = fake_quantize_weight(w, 4, 64)
    for row in q.reshape(16, 2, 64):  # at most 16 levels per group, symmetric around 0
        for group in row:
            assert len(torch.unique(group)) <= 16


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-llama"])
def test_sensitivity_table_shapes_and_monotone(load_model, preset):
    model, tok, family = load_model(preset)
    before = copy.deepcopy(model.state_dict())
    table = analyze(model, tok, family, TEXTS, bits=(8, 2), max_texts=2, max_length=12)
    assert len(table.units) == len(transformer_linears(model, family))
    for unit in table.units:
        assert table.measured[unit][2] >= table.measured[unit][8]
        assert table.estimated[unit][2] > table.estimated[unit][8] >= 0
    for key, value in model.state_dict().items():  # probes restore every weight
        assert torch.equal(value, before[key]), key
    assert Sensitivity.from_dict(table.to_dict()).measured == table.measured


def test_mixed_precision_pass_from_budget_records_plan(load_model, tmp_path):
    model, tok, family = load_model("tiny-bert")
    reference = copy.deepcopy(model)
    small = autolite.compress(model, [MixedPrecision(avg_bits=4.5, candidates=[2, 4, 8], sensitivity_texts=4)],
                              calib=TEXTS, tokenizer=tok, family=family)
    recorded = small.config.autolite["recipe"]["passes"][0]
    assert recorded["bits"] and set(recorded["bits"].values()) <= {2, 4, 8}
    numel = {n: m.weight.numel() for n, m in transformer_linears(reference, family).items()}
    assert average_bits(recorded["bits"], numel, 64) <= 4.5
    from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    packed = [m for m in small.modules() if isinstance(m, (WeightOnlyInt4Linear, WeightOnlyInt8Linear))]
    assert len(packed) == sum(1 for b in recorded["bits"].values() if b in (4, 8))
    cos = autolite.evaluate(small, tok, reference=reference, data=TEXTS, family=family)["cosine"]
    assert 0.9 < cos < 1.0
    autolite.save_model(small, tok, tmp_path / "m")
    again, _, _ = autolite.load(tmp_path / "m")
    ids = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(again(**ids).logits, small(**ids).logits, atol=1e-5)


def test_llama_mixed_recipe_file_applies(load_model):
    from pathlib import Path

    from autolite.passes import load_recipe

    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "llama-mixed-4.5.yaml")
    assert recipe.passes[0].avg_bits == 4.5 and recipe.passes[0].estimator == "output"
    assert recipe.passes[0].method == "gptq" and recipe.passes[0].embedding and not recipe.passes[0].symmetric
    model, tok, family = load_model("tiny-llama")
    from autolite.quant.mixed import unit_bits_table

    numel = {n: m.weight.numel() for n, m in transformer_linears(model, family).items()}
    bpw = unit_bits_table(model, {n: [n] for n in numel}, recipe.passes[0].candidates, 64)
    small = autolite.compress(model, recipe, calib=TEXTS, tokenizer=tok, family=family)
    plan = small.config.autolite["recipe"]["passes"][0]["bits"]
    assert set(plan) == set(numel) and average_bits(plan, numel, 64, bpw) <= 4.5
    assert set(plan.values()) <= {"w8", "w4g32", "w4g64", "w4g128"}
    from autolite.quant.embedding import Int8Embedding

    assert isinstance(small.get_input_embeddings(), Int8Embedding)
