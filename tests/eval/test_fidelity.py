import copy

import pytest
import torch

import autolite
from autolite.data import TextData


@pytest.mark.parametrize("preset,keys", [
    ("tiny-bert", {"cosine", "top1_agreement"}),
    ("tiny-llama", {"perplexity", "perplexity_ref", "perplexity_rel_change", "next_token_agreement"}),
    ("tiny-t5", {"cosine", "perplexity", "next_token_agreement"}),
])
def test_model_against_itself_is_perfect(load_model, texts, preset, keys):
    model, tok, family = load_model(preset)
    result = autolite.evaluate(model, tok, reference=model, data=texts)
    assert keys <= set(result)
    for key in ("cosine", "top1_agreement", "next_token_agreement"):
        if key in result:
            assert result[key] == pytest.approx(1.0, abs=1e-5)
    if "perplexity_rel_change" in result:
        assert result["perplexity_rel_change"] == pytest.approx(0.0, abs=1e-6)


def test_perturbed_model_loses_fidelity(load_model, texts):
    model, tok, _ = load_model("tiny-bert")
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    result = autolite.evaluate(noisy, tok, reference=model, data=texts)
    assert result["cosine"] < 0.99


def test_accuracy_matches_manual_count(load_model):
    model, tok, family = load_model("tiny-bert")
    texts = ["good film", "bad film", "fine", "awful plot", "great"]
    labels = [1, 0, 1, 0, 1]
    ids = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        predictions = model(**ids).logits.argmax(-1).tolist()
    expected = sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)
    result = autolite.evaluate(model, tok, data=TextData(texts, labels), batch_size=2)
    assert result["accuracy"] == pytest.approx(expected)


def test_labels_without_head_are_reported_not_faked(load_model):
    model, tok, _ = load_model("tiny-llama")
    result = autolite.evaluate(model, tok, data=TextData(["a b c", "d e f"], [0, 1]))
    assert result["accuracy"] is None and "no classification head" in result["accuracy_note"]


def test_api_mistakes_are_one_line_errors(load_model):
    import pytest

    import autolite
    from autolite.errors import ArgumentError

    model, tok, _ = load_model("tiny-bert")
    other, _, _ = load_model("tiny-llama")
    with pytest.raises(ArgumentError, match="needs an HF model as model, got NoneType"):
        autolite.evaluate(None, tok)
    with pytest.raises(ArgumentError, match="needs the model's tokenizer, got NoneType"):
        autolite.evaluate(model, None)
    with pytest.raises(ArgumentError, match="reference is of kind 'decoder' but the model of kind 'encoder'"):
        autolite.evaluate(model, tok, reference=other, max_texts=2)
    t5, _, _ = load_model("tiny-t5")
    with pytest.raises(ArgumentError, match="reference is of kind 'encoder' but the model of kind 'seq2seq'"):
        autolite.evaluate(t5, tok, reference=model, max_texts=2)
