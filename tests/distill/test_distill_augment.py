"""Augmented batches, layer search, mapped hidden-state loss and the time-based schedule."""
import pytest
import torch

from autolite.data import load_texts
from autolite.distill import TrainConfig, build_student
from autolite.distill.augment import Augmenter, special_affixes, word_token_ids
from autolite.distill.losses import layer_mse_loss
from autolite.distill.student import search_layers
from autolite.distill.train import layer_pairs, lr_at
from autolite.errors import DataError, RecipeError

TEXTS = load_texts(None, split="calib").head(12).texts


def test_augmented_batches_are_deterministic_padded_and_wrapped(load_model):
    _, tok, _ = load_model("tiny-bert")
    aug = Augmenter(tok, TEXTS, max_length=32, augment=1.0, seed=3)
    first = aug.batch(list(range(8)), step=5)
    assert torch.equal(first["input_ids"], aug.batch(list(range(8)), step=5)["input_ids"])
    assert not torch.equal(first["input_ids"], aug.batch(list(range(8)), step=6)["input_ids"])
    prefix, suffix = special_affixes(tok)
    assert prefix == [tok.cls_token_id] and suffix == [tok.sep_token_id]
    ids, mask = first["input_ids"], first["attention_mask"]
    assert ids.shape[1] <= 32 and mask[:, 0].all() and (ids[:, 0] == tok.cls_token_id).all()
    lengths = mask.sum(1)
    assert int(lengths.max()) == ids.shape[1]  # padded to the longest sample only
    for row, n in zip(ids, lengths):
        assert int(row[n - 1]) == tok.sep_token_id and (row[n:] == tok.pad_token_id).all()
    clean = Augmenter(tok, TEXTS, max_length=32, augment=0.0).batch([0], 0)["input_ids"][0]
    assert torch.equal(clean, tok(TEXTS[0], return_tensors="pt", truncation=True, max_length=32)["input_ids"][0])


def test_word_tokens_exclude_specials_and_pieces(load_model):
    _, tok, _ = load_model("tiny-bert")
    words = word_token_ids(tok)
    vocab = {i: t for t, i in tok.get_vocab().items()}
    assert words and not set(words) & set(tok.all_special_ids)
    assert all(not vocab[i].startswith("##") and vocab[i].isalpha() for i in words)
    with pytest.raises(DataError):
        Augmenter(tok, [], 16)


def test_layer_search_beats_or_ties_even_spacing_and_pairs_map_origin(load_model):
    teacher, tok, family = load_model("tiny-bert")
    keep, score = search_layers(teacher, family, 1, tok, TEXTS[:4])
    assert len(keep) == 1 and -1.0 <= score <= 1.0
    student = build_student(teacher, family, keep)
    assert layer_pairs(student, TrainConfig(steps=1)) == [(1, keep[0] + 1)]
    assert layer_pairs(student, TrainConfig(steps=1, hidden_layers="last")) is None
    with pytest.raises(RecipeError):
        TrainConfig(steps=1, augment=1.5)


def test_layer_mse_is_relative_and_zero_on_match():
    a = [torch.randn(2, 3, 8) for _ in range(3)]
    b = [x * 10 for x in a]
    assert layer_mse_loss(a, a, [(1, 1), (2, 2)]).item() == pytest.approx(0.0, abs=1e-8)
    # relative: scaling both sides by 10 leaves the value unchanged
    c = [torch.zeros(2, 3, 8)] * 3
    assert layer_mse_loss(c, a, [(1, 2)]).item() == pytest.approx(1.0, rel=1e-5)
    assert layer_mse_loss([x * 10 for x in c], b, [(1, 2)]).item() == pytest.approx(1.0, rel=1e-5)


def test_lr_follows_time_budget_with_warmup():
    config = TrainConfig(minutes=1.0, lr=1e-3, warmup_steps=4)
    assert lr_at(config, 0, 0.0) == pytest.approx(2.5e-4)
    assert lr_at(config, 10, 0.0) == pytest.approx(1e-3)
    assert lr_at(config, 10, 30.0) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert lr_at(config, 10, 60.0) == pytest.approx(5e-5)
    steps = TrainConfig(steps=10, lr=1e-3, warmup_steps=1)
    assert lr_at(steps, 5) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
