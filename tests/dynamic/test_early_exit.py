"""Batched early exit on a tiny BERT classifier: rows really leave the batch, reload is bit-identical."""
import copy
import random

import pytest
import torch
import transformers

import autolite
from autolite.dynamic.early_exit import EarlyExit
from autolite.errors import RecipeError
from autolite.eval.forward import mean_pool
from autolite.passes import PassContext

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def tiny_classifier(layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=64, num_labels=3, vocab_size=30522)
    return transformers.BertForSequenceClassification(config).eval()


def calib_texts(n: int = 48) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 16))) for _ in range(n)]


def exit_model(tokenizer, **options):
    model = tiny_classifier()
    ctx = PassContext(tokenizer=tokenizer, calib=calib_texts(), labels=[i % 3 for i in range(48)])
    small = autolite.compress(copy.deepcopy(model), [EarlyExit(layers=[0, 1], epochs=2, **options)], ctx=ctx)
    return model, small, ctx


def test_exited_rows_leave_the_batch(tokenizer):
    full, small, _ = exit_model(tokenizer, threshold=1.0)
    encoder = small.bert.encoder
    batch = tokenizer(calib_texts(16), padding=True, return_tensors="pt")
    with torch.no_grad():
        states = full.bert(**batch, output_hidden_states=True).hidden_states[1]  # after layer 0
        pooled = mean_pool(states, batch["attention_mask"])  # what the exit heads read (pool="mean")
        conf = encoder.exits["0"](pooled).softmax(-1).amax(-1)
        encoder.exit_threshold.fill_(float(conf.median()))  # about half the rows leave after layer 0
        seen = []
        small.bert.encoder.layer[2].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
        logits = small(**batch).logits
        reference = full(**batch).logits
    stayed = (encoder.last_exit_layers == 3)
    assert 0 < int(stayed.sum()) < 16 and seen[0] == int(stayed.sum())  # later layers saw the smaller batch
    assert torch.allclose(logits[stayed], reference[stayed], atol=1e-5)  # scattered back in order
    left = encoder.last_exit_layers == 0
    assert torch.allclose(logits[left], encoder.exits["0"](pooled[left]), atol=1e-5)


def test_calibrated_threshold_reloads_bit_identical(tmp_path, tokenizer):
    _, small, ctx = exit_model(tokenizer, max_drop=5.0)
    assert any("calibrated" in note for note in ctx.notes)
    threshold = float(small.bert.encoder.exit_threshold)
    assert 0.0 < threshold <= 1.0
    autolite.save_model(small, tokenizer, tmp_path / "ee")
    again, _, _ = autolite.load(str(tmp_path / "ee"))
    batch = tokenizer(calib_texts(12), padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(small(**batch).logits, again(**batch).logits)
    assert float(again.bert.encoder.exit_threshold) == threshold


@pytest.mark.parametrize("value", [0.0, 1.5, -0.2])
def test_threshold_outside_unit_interval_is_an_error(value):
    with pytest.raises(RecipeError, match=r"threshold must be in \(0, 1\]"):
        EarlyExit(threshold=value)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_dropout_outside_its_range_is_an_error(value):
    with pytest.raises(RecipeError, match=r"dropout must be in \[0, 1\)"):
        EarlyExit(dropout=value)


def test_model_without_classifier_is_an_error(tokenizer):
    model, tok, _ = autolite.load("random:tiny-gpt2")
    with pytest.raises(RecipeError, match="classif"):
        autolite.compress(model, [EarlyExit()], calib=calib_texts(), tokenizer=tok)


def test_exit_layer_past_the_last_is_an_error(tokenizer):
    with pytest.raises(RecipeError, match="below the last layer"):
        autolite.compress(tiny_classifier(), [EarlyExit(layers=[3])], calib=calib_texts(), tokenizer=tokenizer)


def test_embedding_exit_runs_no_layer(tokenizer):
    model = tiny_classifier()
    ctx = PassContext(tokenizer=tokenizer, calib=calib_texts(), labels=[i % 3 for i in range(48)])
    small = autolite.compress(model, [EarlyExit(layers=[-1, 1], epochs=2, threshold=0.01)], ctx=ctx)
    seen = []
    small.bert.encoder.layer[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        logits = small(**tokenizer(calib_texts(8), padding=True, return_tensors="pt")).logits
    assert logits.shape == (8, 3) and not seen  # every row left on the embeddings: no layer ran
    assert small.bert.encoder.last_exit_layers.tolist() == [-1] * 8
