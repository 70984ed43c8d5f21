"""Runtime head selection on tiny BERT: dropped heads are not computed, all heads = the plain model."""
import copy

import pytest
import torch
import torch.nn.functional as F

import autolite
from autolite.dynamic.head_select import HeadSelect, HeadSelectAttention
from autolite.errors import RecipeError


@pytest.fixture
def bert():
    model, tok, _ = autolite.load("random:tiny-bert")
    return model, tok


def test_all_heads_match_the_plain_model(bert, texts):
    model, tok = bert
    selected = autolite.compress(copy.deepcopy(model), [HeadSelect(heads=99)])
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(selected(**batch).logits, model(**batch).logits, atol=1e-5)


def test_dropped_heads_are_not_computed(bert, texts, monkeypatch):
    model, tok = bert
    selected = autolite.compress(model, [HeadSelect(heads=2)])
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    head_dim = hidden // model.config.num_attention_heads
    shapes = []
    real_linear = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: shapes.append(tuple(w.shape)) or real_linear(x, w, b))
    with torch.no_grad():
        selected(**tok(texts, padding=True, return_tensors="pt"))
    sliced = 2 * head_dim
    assert shapes.count((sliced, hidden)) == 3 * layers  # q, k, v of the 2 chosen heads only
    assert shapes.count((hidden, sliced)) == layers  # output projection: the chosen heads' columns
    blocks = [m for m in selected.modules() if isinstance(m, HeadSelectAttention)]
    assert all(len(b.last_heads) == 2 for b in blocks)


def test_calibrated_heads_reload_bit_identical(bert, texts, tmp_path):
    model, tok = bert
    ctx = autolite.passes.PassContext(tokenizer=tok, calib=texts * 4)
    selected = autolite.compress(model, [HeadSelect(min_fidelity=0.5)], ctx=ctx)
    assert any("head-select:" in note for note in ctx.notes)
    autolite.save_model(selected, tok, tmp_path / "hs")
    again, _, _ = autolite.load(str(tmp_path / "hs"))
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(selected(**batch).logits, again(**batch).logits)
    keeps = [int(m.keep) for m in again.modules() if isinstance(m, HeadSelectAttention)]
    assert keeps == [int(m.keep) for m in selected.modules() if isinstance(m, HeadSelectAttention)]


def test_bad_input_is_an_error():
    with pytest.raises(RecipeError, match="heads must be an integer >= 1"):
        HeadSelect(heads=0)
    with pytest.raises(RecipeError, match="min_fidelity"):
        HeadSelect(min_fidelity=1.5)
    model, _, _ = autolite.load("random:tiny-gpt2")
    with pytest.raises(RecipeError, match="BERT-like"):
        autolite.compress(model, [HeadSelect(heads=2)])


def test_int8_after_head_select_leaves_the_sliced_attention_float_and_runs(bert, texts):
    model, tok = bert
    both = autolite.compress(model, [HeadSelect(heads=2), {"pass": "int8-dynamic", "fallback": False}])
    attention = next(m for m in both.modules() if isinstance(m, HeadSelectAttention))
    assert type(attention.self.query) is torch.nn.Linear  # sliced per batch: stays float
    assert any(type(m).__name__ == "DynamicInt8Linear" for m in both.modules())  # the FFN is INT8
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(both(**batch).logits).all()
