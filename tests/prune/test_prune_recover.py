"""Recovery: augmented, seeded batches; it brings a pruned embedding model back on held-out text; bad settings."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.arch import base_model, family_of
from autolite.data import load_texts
from autolite.errors import DataError, RecipeError
from autolite.eval.forward import tokenize
from autolite.passes import PassContext
from autolite.prune import PruneFFN, PruneHeads
from autolite.prune.recover import recover, recovery_batches

CPU = torch.device("cpu")


def _embedding_model(load_model):
    """tiny-bert without its classification head: recovery then matches pooled embeddings + hidden states."""
    model, tok, _ = load_model("tiny-bert")
    encoder = base_model(model).eval()
    return encoder, tok, family_of(encoder)


def test_recovery_batches_are_seeded_augmented_and_padded(load_model):
    _, tok, family = _embedding_model(load_model)
    texts = load_texts(None, split="calib").texts[:64]
    make = lambda seed, augment: recovery_batches(tok, texts, family, CPU, batch_size=8, augment=augment,  # noqa
                                                  seed=seed)
    default, plain = make(0, None), make(0, 0.0)
    first, again, other = default(3), make(0, None)(3), make(1, None)(3)
    assert torch.equal(first["input_ids"], again["input_ids"])  # batch s is a function of (seed, s)
    assert not torch.equal(first["input_ids"], other["input_ids"])
    assert first["input_ids"].shape[0] == 8 and first["attention_mask"].shape == first["input_ids"].shape
    clean = {tuple(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts}

    def rows(batch):
        return {tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])}
    augmented = set().union(*(rows(default(s)) for s in range(8)))  # encoder default: 70% augmented
    assert len(augmented - clean) >= 20
    assert set().union(*(rows(plain(s)) for s in range(8))) <= clean


def _held_out_error(student, teacher, tok, texts) -> float:
    """Relative squared error of the last hidden state on ``texts`` (real tokens only)."""
    inputs = tokenize(tok, texts, 128)
    with torch.no_grad():
        s, t = (m(**inputs).last_hidden_state for m in (student, teacher))
    mask = inputs["attention_mask"].bool()
    return float(((s - t)[mask] ** 2).sum() / (t[mask] ** 2).sum())


def test_recovery_brings_a_pruned_embedding_model_back_on_held_out_text(load_model):
    teacher, tok, family = _embedding_model(load_model)
    calib, held = load_texts(None, split="calib"), load_texts(None, split="heldout").texts[:48]
    ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts)
    plain = dict(importance="magnitude", reconstruct=False)
    pruned = autolite.compress(copy.deepcopy(teacher), [PruneHeads(ratio=0.5, **plain), PruneFFN(ratio=0.6, **plain)],
                               tokenizer=tok, family=family, ctx=ctx)
    before = _held_out_error(pruned, teacher, tok, held)
    seen = []
    losses = recover(pruned, teacher, family, recovery_batches(tok, calib.texts, family, CPU, batch_size=16),
                     steps=24, lr=1e-3, on_eval=seen.append, eval_every=12)
    after = _held_out_error(pruned, teacher, tok, held)
    assert seen == [12, 24] and len(losses) == 24 and losses[-1] < losses[0]
    assert after < 0.5 * before, (before, after)  # texts it never saw: at least half of the error gone


def test_recovery_is_deterministic(load_model):
    teacher, tok, family = _embedding_model(load_model)
    texts = load_texts(None, split="calib").texts[:24]
    ctx = PassContext(family=family, tokenizer=tok, calib=texts)
    pruned = autolite.compress(copy.deepcopy(teacher), [PruneFFN(ratio=0.5, importance="magnitude", reconstruct=False)],
                               tokenizer=tok, family=family, ctx=ctx)
    runs = []
    for _ in range(2):
        student = copy.deepcopy(pruned)
        recover(student, teacher, family, recovery_batches(tok, texts, family, CPU, batch_size=8), steps=3, lr=1e-3)
        runs.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_prune_pass_runs_recovery_and_notes_it(load_model):
    teacher, tok, family = _embedding_model(load_model)
    ctx = PassContext(family=family, tokenizer=tok, calib=load_texts(None, split="calib").texts[:32])
    recipe = [PruneFFN(ratio=0.5, importance="magnitude", reconstruct=False, recover_steps=3, recover_batch=4)]
    autolite.compress(copy.deepcopy(teacher), recipe,
                      tokenizer=tok, family=family, ctx=ctx)
    assert any("recovery 3 steps (batch 4" in note for note in ctx.notes)


@pytest.mark.parametrize("kwargs,message", [(dict(recover_lr=0), "recover_lr must be"),
                                            (dict(recover_lr="fast"), "recover_lr must be"),
                                            (dict(recover_batch=0), "recover_batch must be"),
                                            (dict(recover_augment=1.5), "recover_augment is the share")])
def test_recovery_settings_errors(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        PruneFFN(ratio=0.3, **kwargs)


def test_recovery_without_text_is_a_clear_error(load_model):
    _, tok, family = _embedding_model(load_model)
    with pytest.raises(DataError, match="recovery needs calibration text"):
        recovery_batches(tok, [], family, CPU)


def test_recover_from_original_distils_from_the_model_compress_was_given(load_model, monkeypatch):
    """Two prune passes with ``recover_from: original``: both recoveries distil from the unpruned input, not
    from the first pass's output; the input model stays unchanged."""
    import autolite.prune.base as base

    model, tok, family = _embedding_model(load_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teachers = []
    monkeypatch.setattr(base, "recover_with", lambda m, teacher, *a, **k: teachers.append(teacher))
    recipe = [PruneHeads(ratio=0.5, recover_steps=1, recover_from="original"),
              PruneFFN(ratio=0.5, recover_steps=1, recover_from="original")]
    autolite.compress(model, recipe, tokenizer=tok, family=family)
    assert len(teachers) == 2 and all(t is model for t in teachers)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RecipeError, match="recover_from"):
        PruneFFN(ratio=0.5, recover_from="teacher")
