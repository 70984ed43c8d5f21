"""``compress`` returns a new model and leaves its argument alone unless asked (``inplace`` / ``compress_``)."""
import pytest
import torch

import autolite
from autolite.errors import ArgumentError, AutoliteError
from autolite.passes import PassContext, compress_
from autolite.quant import Int8Dynamic


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_compress_leaves_its_input_unchanged(load_model):
    model, tok, family = load_model("tiny-bert")
    before = _snapshot(model)
    small = autolite.compress(model, [{"pass": "int8-dynamic", "kernel": "x86", "fallback": False}], tokenizer=tok)
    assert small is not model and not getattr(model.config, "autolite", None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert small.config.autolite["recipe"]["passes"][0]["pass"] == "int8-dynamic"
    fidelity = autolite.evaluate(small, tok, reference=model, max_texts=8)
    assert fidelity["cosine"] < 1.0  # really compared with the FP32 original, not with itself


def test_inplace_and_compress_underscore_transform_the_argument(load_model):
    model, tok, _ = load_model("tiny-bert")
    assert autolite.compress(model, [Int8Dynamic(kernel="x86", fallback=False)], tokenizer=tok, inplace=True) is model
    other, tok, _ = load_model("tiny-bert")
    assert compress_(other, "fp32", tokenizer=tok) is other and other.config.autolite


@pytest.mark.parametrize("model", [None, "minilm", torch.nn.Linear(2, 2)])
def test_compress_refuses_what_is_not_a_model(model):
    with pytest.raises(ArgumentError, match="needs an HF model"):
        autolite.compress(model, "fp32")


def test_sequence_past_the_positions_is_refused_before_any_pass(load_model):
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, shape=(1, 100000))
    with pytest.raises(AutoliteError, match="longer than the model's 512 positions"):
        autolite.compress(model, "fp32", ctx=ctx)


def test_int4_model_counts_and_names_its_stored_weights(load_model):
    from autolite.eval.bench import model_size
    from autolite.weights import stored_weights

    model, tok, family = load_model("tiny-llama")
    ctx = PassContext(family=family, tokenizer=tok)
    small = autolite.compress(model, [{"pass": "weight-only", "bits": 4, "group_size": 32}], ctx=ctx)
    counts = stored_weights(small)
    assert counts["INT4"] > 0 and model_size(small)[1] == sum(counts.values()) == model_size(model)[1]
    assert any(note.startswith("stored weights:") and "INT4" in note for note in ctx.notes)
