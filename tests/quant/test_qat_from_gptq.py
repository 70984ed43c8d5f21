"""QAT started from GPTQ: step 0 is the GPTQ model, training moves it, convert + reload stay exact."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.data import TextData
from autolite.distill import TrainConfig
from autolite.errors import RecipeError
from autolite.eval.forward import run_model, tokenize
from autolite.quant.embedding import Int8Embedding
from autolite.quant.fakequant import FakeQuantLinear
from autolite.quant.layers import WeightOnlyInt4Linear
from autolite.quant.qat import convert_qat, prepare_qat_from_packed
from autolite.quant.qat_train import gptq_start, run_qat

CALIB = ["The quick brown fox jumps over the lazy dog near the river bank.", "It was the best of times, it was "
         "the worst of times.", "Call me Ishmael. Some years ago, never mind how long precisely.",
         "Alice was beginning to get very tired of sitting by her sister on the bank."] * 4


def _logits(model, tok, family):
    return run_model(model, family, tokenize(tok, CALIB[:4], 32)).logits


@pytest.fixture(scope="module")
def gptq_model():
    model, tok, family = autolite.load("random:tiny-llama")
    packed = gptq_start(model, tok, family, CALIB, group_size=32, embedding=True, calib_tokens=512)
    return model, tok, family, packed


def test_step0_equals_gptq_and_converts_back_exactly(gptq_model):
    _, tok, family, packed = gptq_model
    fake = prepare_qat_from_packed(copy.deepcopy(packed)).eval()
    layers = [m for m in fake.modules() if isinstance(m, FakeQuantLinear)]
    assert len(layers) == 14 and not any(isinstance(m, WeightOnlyInt4Linear) for m in fake.modules())
    with torch.no_grad():
        assert torch.allclose(_logits(fake, tok, family), _logits(packed, tok, family), atol=1e-5)
        back = convert_qat(fake)
    want = packed.state_dict()
    for key, value in back.state_dict().items():  # the same codes, scales and zeros
        assert torch.equal(value, want[key]), key
    assert len(back.config.autolite["recipe"]["passes"]) == 1  # the GPTQ pass already rebuilds these layers


def test_short_qat_from_gptq_trains_converts_and_reloads(gptq_model, tmp_path):
    model, tok, family, packed = gptq_model
    config = TrainConfig(steps=3, batch_size=4, max_length=24, lr=5e-3, warmup_steps=1, eval_every=100,
                         alpha=1.0, temperature=1.0, augment=0.0)
    result = run_qat(model, tok, family, 4, TextData(CALIB), config, group_size=32, mode="lsq", init="gptq",
                     start=packed)
    student = result.student.eval()
    assert isinstance(student.get_input_embeddings(), Int8Embedding)
    with torch.no_grad():
        expected = _logits(student, tok, family)
        assert not torch.allclose(expected, _logits(packed, tok, family), atol=1e-4)  # training moved it
        real = convert_qat(student)
        assert torch.allclose(_logits(real, tok, family), expected, atol=1e-4)
    autolite.save_model(real, tok, tmp_path / "qat")
    loaded, tok2, family2 = autolite.load(tmp_path / "qat")
    with torch.no_grad():
        assert torch.equal(_logits(loaded, tok2, family2), _logits(real, tok, family))
    assert isinstance(loaded.get_input_embeddings(), Int8Embedding)


def test_gptq_init_needs_int4(gptq_model):
    model, tok, family, packed = gptq_model
    config = TrainConfig(steps=1)
    with pytest.raises(RecipeError, match="init gptq"):
        run_qat(model, tok, family, 8, TextData(CALIB), config, mode="lsq", init="gptq", start=packed)
    with pytest.raises(RecipeError, match="needs mode 'lsq'"):
        run_qat(model, tok, family, 4, TextData(CALIB), config, group_size=32, mode="ema", init="gptq",
                start=packed)
    with pytest.raises(RecipeError, match="packed INT4"):
        prepare_qat_from_packed(copy.deepcopy(model))


def test_resume_from_rounding_start_equals_uninterrupted(gptq_model, tmp_path):
    """A resumed run may skip GPTQ: the checkpoint holds every trained weight, scale, zero and embedding row."""
    model, tok, family, packed = gptq_model
    config = TrainConfig(steps=4, batch_size=4, max_length=24, lr=5e-3, warmup_steps=1, eval_every=100,
                         checkpoint_every=2, alpha=1.0, temperature=1.0, augment=0.0)

    def run(start, ckpt, progress=None):
        return run_qat(model, tok, family, 4, TextData(CALIB), config, group_size=32, mode="lsq", init="gptq",
                       start=start, checkpoint_dir=ckpt, progress=progress)

    full = run(packed, None)

    def interrupt(step, _record):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(packed, tmp_path / "ckpt", interrupt)
    rounded = gptq_start(model, tok, family, CALIB, group_size=32, embedding=True, method="rtn")
    resumed = run(rounded, tmp_path / "ckpt")
    assert resumed.step == full.step == 4
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
