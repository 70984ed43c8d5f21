"""Save -> autolite.load round trips of the INT8 dynamic and weight-only passes: identical outputs."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.passes import applied_recipe
from autolite.eval.forward import run_model, tokenize
from autolite.quant.int8 import Int8Dynamic
from autolite.quant.layers import DynamicInt8Linear, WeightOnlyInt4Linear, WeightOnlyInt8Linear
from autolite.quant.weight_only import WeightOnly

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Call me Ishmael.", "A short one."]


def _outputs(model, tok, family):
    out = run_model(model, family, tokenize(tok, TEXTS, 32))
    return out.logits if out.logits is not None else out.embeddings


@pytest.mark.parametrize("preset,config,layer_cls", [
    ("tiny-bert", dict(cls=Int8Dynamic, kernel="onednn", fallback=False), DynamicInt8Linear),
    ("tiny-gpt2", dict(cls=Int8Dynamic, kernel="int_mm", fallback=False), DynamicInt8Linear),
    ("tiny-llama", dict(cls=WeightOnly, bits=4, group_size=32, symmetric=False), WeightOnlyInt4Linear),
    ("tiny-gpt2", dict(cls=WeightOnly, bits=8, group_size=None), WeightOnlyInt8Linear),
])
def test_save_load_gives_identical_outputs(load_model, tmp_path, preset, config, layer_cls):
    model, tok, family = load_model(preset)
    config = config.pop("cls")(**config)
    quantized = autolite.compress(model, [config], tokenizer=tok, family=family)
    assert any(isinstance(m, layer_cls) for m in quantized.modules())
    before = _outputs(quantized, tok, family)
    autolite.save_model(quantized, tok, tmp_path / "q")
    loaded, tok2, family2 = autolite.load(tmp_path / "q")
    kinds = [type(m) for m in loaded.modules() if isinstance(m, layer_cls)]
    recorded = applied_recipe(quantized).passes[0]  # the handler records its layers in a copy of config
    assert len(kinds) == len(recorded.layers) > 0
    assert torch.equal(before, _outputs(loaded, tok2, family2))


def test_int4_file_is_much_smaller(load_model, tmp_path):
    model, tok, family = load_model("tiny-llama")
    autolite.save_model(model, tok, tmp_path / "fp32")
    quantized = autolite.compress(copy.deepcopy(model), [WeightOnly(bits=4, group_size=64, include_head=True)],
                                  tokenizer=tok, family=family)
    autolite.save_model(quantized, tok, tmp_path / "w4")
    size = {name: sum(p.stat().st_size for p in (tmp_path / name).glob("*.safetensors")) for name in ("fp32", "w4")}
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    saved = size["fp32"] - size["w4"]
    # INT4 + BF16 scale + uint8 zero per 64 weights: 0.5 + 3/64 bytes instead of 4 bytes per weight
    assert saved > 0.85 * linear_bytes
