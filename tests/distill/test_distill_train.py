"""Trainer: exact resume after interruption, NaN handling, learning on a tiny model."""
import pytest
import torch

from autolite.data import load_texts
from autolite.distill import TrainConfig, build_student, distill
from autolite.distill.checkpoint import has_checkpoint
from autolite.distill.train import batch_indices
from autolite.errors import NumericsError, RecipeError

DATA = load_texts(None, split="calib").head(16)
HELDOUT = load_texts(None, split="heldout").head(8)


def _run(load_model, preset, config, ckpt, progress=None):
    teacher, tok, family = load_model(preset)
    student = build_student(teacher, family, [1])
    return distill(teacher, student, tok, family, config, DATA, HELDOUT, checkpoint_dir=ckpt, progress=progress)


def _config(**kw):
    base = dict(steps=4, batch_size=4, max_length=16, lr=1e-3, eval_every=2, eval_texts=4, checkpoint_every=2,
                warmup_steps=2, attention=1.0)
    base.update(kw)
    return TrainConfig(**base)


def test_batch_order_is_deterministic_and_covers_epoch():
    first = [batch_indices(20, 5, s, 1) for s in range(4)]
    assert sorted(sum(first, [])) == list(range(20))
    assert first == [batch_indices(20, 5, s, 1) for s in range(4)]
    assert batch_indices(20, 5, 4, 1) != first[0]  # next epoch, new order


@pytest.mark.parametrize("preset", ["tiny-bert"])  # dropout on: exercises the per-step reseeding
def test_resume_equals_uninterrupted(load_model, preset, tmp_path):
    full = _run(load_model, preset, _config(), tmp_path / "a")

    def interrupt(step, _record):
        if step == 3:  # between checkpoints: the interrupt handler saves step 3
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(load_model, preset, _config(), tmp_path / "b", progress=interrupt)
    assert has_checkpoint(tmp_path / "b")
    resumed = _run(load_model, preset, _config(), tmp_path / "b")
    assert resumed.step == full.step == 4
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r.get("loss") for r in resumed.history] == [r.get("loss") for r in full.history]


def test_training_reduces_loss_and_reports_eval(load_model, tmp_path):
    result = _run(load_model, "tiny-bert", _config(steps=6, lr=3e-3, attention=0.0, eval_every=3), None)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0]
    evals = [r["eval"] for r in result.history if "eval" in r]
    assert len(evals) == 3 and 0.5 < evals[-1]["cosine"] <= 1.0 + 1e-6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(load_model, tmp_path):
    teacher, tok, family = load_model("tiny-llama")
    student = build_student(teacher, family, [1])
    calls = {"n": 0}

    def poison(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] > 3:
            output.logits = output.logits * float("nan")
        return output
    teacher.register_forward_hook(poison)
    with pytest.raises(NumericsError, match="diverged.*step 3.*kept"):
        distill(teacher, student, tok, family, _config(steps=6, eval_every=100), DATA, None,
                checkpoint_dir=tmp_path / "c")
    import json
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    assert state["step"] == 3
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_config_errors():
    with pytest.raises(RecipeError, match="budget"):
        TrainConfig()
    with pytest.raises(RecipeError):
        TrainConfig(steps=0)


def test_different_tokenizers_are_rejected(load_model):
    from autolite.errors import AutoliteError

    teacher, tok, family = load_model("tiny-llama")
    other, _, _ = load_model("tiny-gpt2")
    other.resize_token_embeddings(1000)
    with pytest.raises(AutoliteError, match="different tokenizers"):
        distill(teacher, other, tok, family, _config(), DATA)
