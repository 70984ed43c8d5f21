"""Bit allocation: budget met exactly-or-under, robust layers get the low bits, impossible budgets fail clearly."""
import pytest

from autolite.errors import RecipeError
from autolite.quant.formats import bits_per_weight
from autolite.quant.mixed import MixedPrecision, allocate_bits, average_bits


def _planted():
    # "sensitive" loses a lot below 8 bits; the three robust layers barely care.
    loss = {"sensitive": {8: 0.0, 6: 0.5, 4: 2.0, 3: 5.0, 2: 9.0}}
    for i in range(3):
        loss[f"robust{i}"] = {8: 0.0, 6: 0.001, 4: 0.01, 3: 0.05, 2: 0.3}
    numel = {name: 4096 for name in loss}
    return loss, numel


def test_bits_per_weight_counts_scales():
    assert bits_per_weight(4, 32) == 4.5
    assert bits_per_weight(4, 64) == 4.25
    assert bits_per_weight(8, 64) == 8.25


def test_planted_case_prefers_robust_layers_for_low_bits():
    loss, numel = _planted()
    plan = allocate_bits(loss, numel, budget=4.5, group_size=64)
    assert plan["sensitive"] == 8
    assert all(plan[f"robust{i}"] <= 4 for i in range(3))
    assert average_bits(plan, numel, 64) <= 4.5


@pytest.mark.parametrize("budget", [2.25, 3.0, 3.6, 4.25, 4.5, 5.0, 8.25, 9.0])
def test_budget_met_exactly_or_under(budget):
    loss, numel = _planted()
    plan = allocate_bits(loss, numel, budget=budget, group_size=64)
    avg = average_bits(plan, numel, 64)
    assert avg <= budget + 1e-9
    if budget >= 8.25:
        assert set(plan.values()) == {8}
    # no single further upgrade would still fit and lower the loss
    for unit, bits in plan.items():
        for wider in (b for b in loss[unit] if b > bits and loss[unit][b] < loss[unit][bits]):
            assert average_bits({**plan, unit: wider}, numel, 64) > budget + 1e-9


def test_uniform_budget_exactly_met():
    loss, numel = _planted()
    plan = allocate_bits(loss, numel, budget=4.25, group_size=64, candidates=[4, 8])
    assert average_bits(plan, numel, 64) == pytest.approx(4.25)


def test_impossible_budget_is_a_clear_error():
    loss, numel = _planted()
    with pytest.raises(RecipeError, match="cannot be met.*2.25"):
        allocate_bits(loss, numel, budget=2.0, group_size=64)


def test_config_validation():
    with pytest.raises(RecipeError, match="bits"):
        MixedPrecision()
    with pytest.raises(RecipeError, match="2..8"):
        MixedPrecision(bits={"x": 1})
    assert MixedPrecision(avg_bits=4.5).to_dict()["avg_bits"] == 4.5
