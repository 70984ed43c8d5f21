"""Quantization handlers never write into the config they are given: the layers they chose go into a copy
that the recipe records, so one config object can be applied to several models."""
import pytest

import autolite
from autolite.passes import applied_recipe
from autolite.quant.int8 import Int8Dynamic
from autolite.quant.mixed import MixedPrecision
from autolite.quant.weight_only import WeightOnly

CONFIGS = {
    "int8-dynamic": lambda: Int8Dynamic(kernel="int_mm", fallback=False, rows=8),
    "weight-only": lambda: WeightOnly(bits=8, group_size=None, embedding=True),
    "mixed": lambda: MixedPrecision(bits={".*": "w8"}, embedding=True),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_reused_on_a_second_model_records_only_that_models_layers(load_model, kind):
    config = CONFIGS[kind]()
    before = config.to_dict()
    first, tok, _ = load_model("tiny-bert")
    second, tok2, _ = load_model("tiny-llama")
    small_first = autolite.compress(first, [config], tokenizer=tok)
    assert config.to_dict() == before  # untouched: nothing of the first model stays on it
    small_second = autolite.compress(second, [config], tokenizer=tok2)
    for small, model in ((small_first, first), (small_second, second)):
        recorded = applied_recipe(small).passes[0]
        names = set(dict(model.named_modules()))
        chosen = list(getattr(recorded, "layers", None) or []) + list(getattr(recorded, "embedding_layers", None) or {})
        assert chosen and set(chosen) <= names
