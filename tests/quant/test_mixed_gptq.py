"""mixed_precision with method gptq: same engine as the w4 presets, per-linear formats, exact reload."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.eval.forward import run_model, tokenize
from autolite.quant.embedding import Int8Embedding, TiedInt8Head
from autolite.quant.mixed import MixedPrecision
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from autolite.quant.weight_only import WeightOnly

CALIB = ["The quick brown fox jumps over the lazy dog near the river bank.", "It was the best of times, it was "
         "the worst of times.", "Call me Ishmael. Some years ago, never mind how long precisely.",
         "Alice was beginning to get very tired of sitting by her sister on the bank."] * 4
GPTQ = {"method": "gptq", "symmetric": False, "calib_tokens": 512, "calib_seq": 64}
PLAN = {r".*q_proj": "w4g32", r".*(k|v)_proj": "w4g64", r".*o_proj": "w8", r".*\.0\.mlp\..*": "w4g32",
        r".*\.1\.mlp\.(gate|up)_proj": "w4g64", r".*\.1\.mlp\.down_proj": "w4g128"}


def _logits(model, tok, family):
    return run_model(model, family, tokenize(tok, CALIB[:4], 32)).logits


def _with_outlier_channels(model):
    """Real LLM activations have a few large channels (where GPTQ beats round-to-nearest); plant some."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[:4] *= 8.0
    return model


def _mixed(model, tok, family, bits, **extra):
    config = MixedPrecision(bits=dict(bits), **{**GPTQ, **extra})
    return autolite.compress(copy.deepcopy(model), [config], calib=CALIB, tokenizer=tok, family=family)


def test_uniform_mixed_gptq_is_the_weight_only_preset(load_model):
    model, tok, family = load_model("tiny-llama")
    preset = WeightOnly(bits=4, group_size=64, symmetric=False, method="gptq", embedding=True, calib_tokens=512,
                        calib_seq=64)
    expected = autolite.compress(copy.deepcopy(model), [preset], calib=CALIB, tokenizer=tok, family=family)
    mixed = _mixed(model, tok, family, {".*": "w4g64"}, embedding=True)
    assert isinstance(mixed.get_input_embeddings(), Int8Embedding)
    assert isinstance(mixed.get_output_embeddings(), (TiedInt8Head, WeightOnlyInt8Linear))  # untied here
    want = expected.state_dict()
    got = mixed.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_mixed_gptq_beats_rtn_and_reloads_bit_identically(load_model, tmp_path):
    model, tok, family = load_model("tiny-llama")
    model = _with_outlier_channels(model)
    reference = _logits(model, tok, family)
    errors = {}
    for method in ("rtn", "gptq"):
        quantized = _mixed(model, tok, family, PLAN, method=method, embedding=True)
        errors[method] = float((_logits(quantized, tok, family) - reference).pow(2).mean())
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
    groups = {n: m.group for n, m in quantized.named_modules() if isinstance(m, WeightOnlyInt4Linear)}
    assert groups["model.layers.0.self_attn.q_proj"] == 32 and groups["model.layers.0.self_attn.v_proj"] == 64
    assert groups["model.layers.1.mlp.down_proj"] == 128 and groups["model.layers.1.mlp.gate_proj"] == 64
    assert groups["model.layers.0.mlp.up_proj"] == 32
    assert isinstance(quantized.get_submodule("model.layers.1.self_attn.o_proj"), WeightOnlyInt8Linear)
    recorded = quantized.config.autolite["recipe"]["passes"][0]
    assert recorded["method"] == "gptq" and recorded["embedding_layers"]
    before = _logits(quantized, tok, family)
    autolite.save_model(quantized, tok, tmp_path / "mixed")
    loaded, tok2, family2 = autolite.load(tmp_path / "mixed")
    assert torch.equal(before, _logits(loaded, tok2, family2))
    for key, value in quantized.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_mixed_gptq_from_budget(load_model):
    model, tok, family = load_model("tiny-llama")
    small = _mixed(model, tok, family, {}, avg_bits=4.5, candidates=["w8", "w4g32", "w4g64", "w4g128"],
                   estimator="output", sensitivity_texts=4, embedding=True)
    plan = small.config.autolite["recipe"]["passes"][0]["bits"]
    assert len(plan) == 14 and set(plan.values()) <= {"w8", "w4g32", "w4g64", "w4g128"}
    assert all(isinstance(small.get_submodule(n), (WeightOnlyInt4Linear, WeightOnlyInt8Linear)) for n in plan)


@pytest.mark.parametrize("entry,message", [
    ({"pass": "mixed_precision", "avg_bits": 4.5, "method": "awq"}, "method must be"),
    ({"pass": "mixed_precision", "avg_bits": 4.5, "method": "gptq", "engine": False}, "gptq needs engine"),
    ({"pass": "mixed_precision", "avg_bits": 4.5, "damp": 0}, "damp must be"),
])
def test_bad_mixed_gptq_options(entry, message):
    with pytest.raises(RecipeError, match=message):
        PassConfig.from_dict(entry)


def test_gptq_aware_sensitivity_sees_smaller_int4_error(load_model):
    from autolite.quant.sensitivity import analyze

    model, tok, family = load_model("tiny-llama")
    model = _with_outlier_channels(model)
    formats = ("w8", "w4g32", "w4g64")
    kwargs = dict(bits=formats, max_texts=4, max_length=16, gradient=False, measured=False, output=True,
                  symmetric=False)
    rtn = analyze(model, tok, family, CALIB, **kwargs).output
    gptq = analyze(model, tok, family, CALIB, gptq=True, **kwargs).output
    assert set(gptq) == set(rtn) and len(rtn) == 14
    for name in rtn:
        assert gptq[name]["w8"] == pytest.approx(rtn[name]["w8"], rel=1e-6)  # INT8 stays round-to-nearest
    for fmt in ("w4g32", "w4g64"):
        assert sum(r[fmt] for r in gptq.values()) < 0.8 * sum(r[fmt] for r in rtn.values())


def test_qat_from_mixed_model_trains_int4_layers_and_reloads(load_model, tmp_path):
    """QAT can start from a mixed model: its INT4 layers (each at its own group) train, INT8 ones stay packed."""
    from autolite.data import TextData
    from autolite.distill import TrainConfig
    from autolite.quant.qat import convert_qat
    from autolite.quant.qat_train import run_qat

    model, tok, family = load_model("tiny-llama")
    mixed = _mixed(model, tok, family, PLAN, embedding=True)
    config = TrainConfig(steps=3, batch_size=4, max_length=24, lr=5e-3, warmup_steps=1, eval_every=100,
                         alpha=1.0, temperature=1.0, augment=0.0)
    result = run_qat(model, tok, family, 4, TextData(CALIB), config, mode="lsq", init="gptq", start=mixed)
    real = convert_qat(result.student.eval())
    groups = {n: m.group for n, m in real.named_modules() if isinstance(m, WeightOnlyInt4Linear)}
    assert groups == {n: m.group for n, m in mixed.named_modules() if isinstance(m, WeightOnlyInt4Linear)}
    with torch.no_grad():
        assert not torch.allclose(_logits(real, tok, family), _logits(mixed, tok, family), atol=1e-4)
    autolite.save_model(real, tok, tmp_path / "qat")
    loaded, tok2, family2 = autolite.load(tmp_path / "qat")
    with torch.no_grad():
        assert torch.equal(_logits(loaded, tok2, family2), _logits(real, tok, family))
