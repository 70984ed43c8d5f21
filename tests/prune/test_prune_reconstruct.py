"""The least-squares refit after a cut: closer to the unpruned model than the plain cut, same shapes."""
from __future__ import annotations

import copy

import pytest
import torch

import autolite
from autolite.errors import RecipeError
from autolite.eval.forward import model_inputs, tokenize
from autolite.prune import PruneFFN, PruneHeads
from autolite.prune import reconstruct

CALIB = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.",
         "Call me Ishmael.", "Alice was beginning to get very tired of sitting by her sister on the bank.",
         "In a hole in the ground there lived a hobbit.", "All happy families are alike.",
         "It is a truth universally acknowledged.", "The sky above the port was the color of television."] * 2
HELD = ["A stitch in time saves nine.", "The rain in Spain stays mainly in the plain.",
        "Every cloud has a silver lining, or so they say."]


def _error(small, model, family, tok) -> float:
    inputs = model_inputs(family, tokenize(tok, HELD), torch.device("cpu"))
    with torch.no_grad():
        got, want = small(**inputs).logits, model(**inputs).logits
    return float((got - want).pow(2).mean() / want.pow(2).mean())


@pytest.mark.parametrize("name,recipe", [
    ("tiny-gpt2", lambda r: [PruneHeads(ratio=0.5, importance="magnitude", reconstruct=r)]),
    ("tiny-llama", lambda r: [PruneFFN(ratio=0.5, importance="magnitude", reconstruct=r)]),
])
def test_refit_is_closer_to_the_original_than_the_plain_cut(name, recipe, load_model):
    model, tok, family = load_model(name)
    errors = {}
    for refit in (False, True):
        small = autolite.compress(copy.deepcopy(model), recipe(refit), tokenizer=tok, family=family, calib=CALIB)
        errors[refit] = _error(small, model, family, tok)
    assert errors[True] < 0.9 * errors[False], errors


def test_refit_with_every_channel_kept_changes_nothing(load_model):
    model, tok, family = load_model("tiny-bert")
    groups = reconstruct.neuron_groups(family, model)
    from autolite.prune.base import _samples
    from autolite.passes import PassContext

    batches = _samples(model, family, PassContext(tokenizer=tok, calib=CALIB), 16)
    stats = reconstruct.collect(model, family, batches, "ffn", {groups[0].key})
    before = groups[0].view.down.weight.detach().clone()
    assert reconstruct.refit(groups[0], "ffn", torch.arange(groups[0].size), stats[groups[0].key]) is not None
    torch.testing.assert_close(groups[0].view.down.weight.detach(), before, atol=1e-4, rtol=1e-4)


def test_chunks_respect_the_gram_budget(load_model, monkeypatch):
    model, _, family = load_model("tiny-bert")
    groups = reconstruct.neuron_groups(family, model)
    assert len(reconstruct.chunks(groups, "ffn")) == 1
    monkeypatch.setattr(reconstruct, "GRAM_BYTES", 1)
    assert [len(c) for c in reconstruct.chunks(groups, "ffn")] == [1] * len(groups)


def test_reconstruct_must_be_a_bool():
    with pytest.raises(RecipeError, match="reconstruct must be true or false"):
        PruneFFN(ratio=0.3, reconstruct="yes")
