"""QAT: STE gradients, EMA/LSQ quantizers, a short QAT run, and convert matching the fake-quant model."""
import copy

import pytest
import torch

import autolite
from autolite.data import load_texts
from autolite.distill import TrainConfig
from autolite.errors import RecipeError
from autolite.quant.common import transformer_linears
from autolite.quant.fakequant import FakeQuantLinear, WeightFakeQuant, fake_quantize_weight
from autolite.quant.qat import convert_qat, prepare_qat, qat_codes
from autolite.quant.qat_train import run_qat


def test_ste_passes_gradient_and_lsq_learns_scale():
    w = torch.randn(8, 64, requires_grad=True)
    quant = WeightFakeQuant(w.detach(), bits=4, group_size=32, mode="lsq")
    out = quant(w)
    assert torch.allclose(out, fake_quantize_weight(w.detach(), 4, 32), atol=1e-6)
    out.pow(2).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert quant.scale.grad is not None and quant.scale.grad.abs().sum() > 0


def test_ema_ranges_move_in_training_only():
    w = torch.randn(4, 64)
    quant = WeightFakeQuant(w, bits=4, group_size=64, mode="ema", momentum=0.5)
    before = quant.range_hi.clone()
    quant.eval()
    quant(w * 3)
    assert torch.equal(quant.range_hi, before)
    quant.train()
    quant(w * 3)
    assert torch.allclose(quant.range_hi, 0.5 * before + 0.5 * 3 * before)


def test_bad_qat_settings():
    with pytest.raises(RecipeError, match="mode"):
        WeightFakeQuant(torch.randn(2, 8), 4, mode="magic")
    with pytest.raises(RecipeError, match="2..8"):
        WeightFakeQuant(torch.randn(2, 8), 1)


@pytest.mark.parametrize("preset,engine", [("tiny-llama", True), ("tiny-gpt2", True), ("tiny-bert", False)])
def test_convert_matches_fake_quant_model(load_model, preset, engine, tmp_path):
    model, tok, family = load_model(preset)
    fq = prepare_qat(copy.deepcopy(model), family, 4, group_size=32, mode="ema")
    assert sum(isinstance(m, FakeQuantLinear) for m in fq.modules()) == len(transformer_linears(model, family))
    fq.eval()
    codes = qat_codes(fq)
    assert all(int(q.min()) >= -8 and int(q.max()) <= 7 for q, _, _ in codes.values())
    ids = tok(["a test of the converted model with enough tokens", "another one"], return_tensors="pt", padding=True)
    inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    with torch.no_grad():
        expected = fq(**inputs).logits
        converted = convert_qat(fq, engine=engine)
        got = converted(**inputs).logits
    assert not any(isinstance(m, FakeQuantLinear) for m in converted.modules())
    assert torch.allclose(got, expected, atol=1e-4)
    if engine:
        from autolite.quant.layers import WeightOnlyInt4Linear

        assert sum(isinstance(m, WeightOnlyInt4Linear) for m in converted.modules()) == len(codes)
        autolite.save_model(converted, tok, tmp_path / "q")
        again, _, _ = autolite.load(tmp_path / "q")
        with torch.no_grad():
            assert torch.allclose(again(**inputs).logits, expected, atol=1e-4)


def test_convert_int8_per_channel_to_engine(load_model):
    from autolite.quant.layers import WeightOnlyInt8Linear

    model, tok, family = load_model("tiny-llama")
    fq = prepare_qat(copy.deepcopy(model), family, 8, group_size=None).eval()
    ids = tok(["eight bit per channel weights, many tokens here"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = fq(input_ids=ids).logits
        converted = convert_qat(fq)
        got = converted(input_ids=ids).logits
    assert any(isinstance(m, WeightOnlyInt8Linear) for m in converted.modules())
    assert torch.allclose(got, expected, atol=1e-4)


def test_short_qat_run_lowers_distillation_loss(load_model):
    model, tok, family = load_model("tiny-llama")
    data = load_texts(None, split="calib").head(16)
    config = TrainConfig(steps=6, batch_size=4, max_length=16, lr=2e-3, warmup_steps=1, eval_every=100)
    result = run_qat(model, tok, family, 2, data, config, group_size=32)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0]
    assert any(isinstance(m, FakeQuantLinear) for m in result.student.modules())
