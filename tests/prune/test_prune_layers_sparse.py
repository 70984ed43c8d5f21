"""prune-layers, sparsify (2:4 and unstructured, compact storage) and recovery."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers

import autolite
from autolite.errors import RecipeError
from autolite.eval.forward import model_inputs, tokenize
from autolite.passes import PassContext
from autolite.prune import PruneFFN, PruneLayers, Sparsify
from autolite.prune.calib import calib_batches
from autolite.prune.recover import fixed_batches, recover
from autolite.prune.sparse import SparseLinear, pack_bits, unpack_bits

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times.", "Call me Ishmael.",
         "Alice was beginning to get very tired of sitting by her sister on the bank."]


def _logits(model, family, tok):
    inputs = model_inputs(family, tokenize(tok, TEXTS), torch.device("cpu"))
    with torch.no_grad():
        return model(**inputs).logits


def _run(load_model, name, recipe):
    model, tok, family = load_model(name)
    ctx = PassContext(family=family, tokenizer=tok, calib=TEXTS)
    return autolite.compress(model, recipe, tokenizer=tok, family=family, ctx=ctx), tok, family, ctx


@pytest.mark.parametrize("name,indices", [("tiny-bert", [0]), ("tiny-llama", [1]), ("tiny-t5", ["encoder.0"]),
                                          ("tiny-gpt2", [0])])
def test_remove_layers_reloads_with_plain_transformers(name, indices, load_model, tmp_path):
    small, tok, family, _ = _run(load_model, name, [PruneLayers(indices=indices)])
    stacks = [v.stack for v in family.layers(small)]
    assert stacks.count(stacks[0]) == 1
    expected = _logits(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "m")
    plain = getattr(transformers, type(small).__name__).from_pretrained(str(tmp_path / "m")).eval()
    torch.testing.assert_close(_logits(plain, family, tok), expected, atol=1e-5, rtol=1e-4)


def test_remove_layers_by_influence(load_model):
    small, _, family, ctx = _run(load_model, "tiny-llama", [PruneLayers(ratio=0.5)])
    assert len(family.layers(small)) == 1 and small.config.num_hidden_layers == 1
    assert any("block influence" in note for note in ctx.notes)


@pytest.mark.parametrize("kwargs,message", [(dict(), "exactly one of"), (dict(indices=[0], ratio=0.5), "exactly one"),
                                            (dict(ratio=1.5), r"\[0, 1\)")])
def test_layer_config_errors(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        PruneLayers(**kwargs)


@pytest.mark.parametrize("indices,message", [([7], "no layer 7"), ([0, 1], "remove every")])
def test_layer_choice_errors(indices, message, load_model):
    with pytest.raises(RecipeError, match=message):
        _run(load_model, "tiny-bert", [PruneLayers(indices=indices)])


def test_pack_bits_round_trip():
    mask = torch.rand(5, 21) > 0.5
    assert torch.equal(unpack_bits(pack_bits(mask), 21), mask)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_two_four_sparsity_is_stored_compactly_and_reloads(name, load_model, tmp_path):
    small, tok, family, ctx = _run(load_model, name, [Sparsify(pattern="2:4", importance="wanda")])
    sparse = [m for m in small.modules() if isinstance(m, SparseLinear)]
    assert sparse
    for module in sparse:
        groups = (module.weight != 0).reshape(module.out_features, -1, 4).sum(-1)
        assert int(groups.max()) <= 2
    state = small.state_dict()
    values = [k for k in state if k.endswith("sparse_values")]
    compact = sum(state[k].nbytes + state[k.replace("values", "mask")].nbytes for k in values)
    assert compact < 0.56 * sum(m.weight.nbytes for m in sparse)
    assert any("no faster" in note for note in ctx.notes)
    expected = _logits(small, family, tok)
    autolite.save_model(small, tok, tmp_path / "m")
    again, _, _ = autolite.load(str(tmp_path / "m"))
    torch.testing.assert_close(_logits(again, family, tok), expected, atol=1e-5, rtol=1e-4)


def test_unstructured_ratio(load_model):
    small, *_ = _run(load_model, "tiny-bert", [Sparsify(pattern="unstructured", ratio=0.7, storage="dense")])
    weight = small.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(float((weight == 0).float().mean()) - 0.7) < 0.02


@pytest.mark.parametrize("kwargs,message", [(dict(pattern="1:8"), "pattern must be"),
                                            (dict(pattern="2:4", ratio=0.3), "exactly half"),
                                            (dict(importance="taylor"), "magnitude or wanda")])
def test_sparsify_errors(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        Sparsify(**kwargs)


def test_recovery_brings_the_pruned_model_back_towards_the_original(load_model):
    model, tok, family = load_model("tiny-llama")
    teacher = copy.deepcopy(model)
    ctx = PassContext(family=family, tokenizer=tok, calib=TEXTS)
    pruned = autolite.compress(model, [PruneFFN(ratio=0.5, importance="magnitude", reconstruct=False)],
                               tokenizer=tok, family=family, ctx=ctx)  # a plain cut: something to recover
    batches = calib_batches(pruned, family, ctx)  # one batch: every step sees the same texts
    losses = recover(pruned, teacher, family, fixed_batches(batches), steps=15, lr=1e-3)
    assert len(losses) == 15 and losses[-1] < 0.8 * losses[0]


def test_iterative_prune_recover_schedule(load_model):
    small, tok, family, ctx = _run(load_model, "tiny-bert", [PruneFFN(ratio=0.5, importance="taylor", iterations=2,
                                                                      recover_steps=2)])
    assert [v.ffn.down.in_features for v in family.layers(small)] == [64, 64]
    assert all(p.requires_grad for p in small.parameters())
