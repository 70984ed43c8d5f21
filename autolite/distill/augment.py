"""Augmented, dynamically padded training batches for distillation on unlabeled text (TinyBERT-style).

A few hundred sentences are too few to distil a student that generalizes: the student memorizes them.
The teacher labels any input, so each training sample is a seeded random variant of a corpus text:

* ``clean``: the text as is;
* ``crop``: a random contiguous span of its tokens;
* ``concat``: it followed by (a part of) another text;
* ``replace``: 10-30% of its tokens replaced by word tokens of the tokenizer's vocabulary or of the corpus;
* ``drop``: 10-25% of its tokens deleted and a few neighbours swapped;
* ``random``: a sequence of random word tokens (vocabulary coverage beyond the corpus).

Everything works on token ids of the teacher's tokenizer; special tokens are added with the tokenizer's
own prefix/suffix (read off an encoded probe text). Batches are padded to their longest sample (dynamic padding),
and batch ``step`` is a pure function of (seed, step), so training stays exactly resumable.
"""
from __future__ import annotations

import random
from typing import Any

import torch

from autolite.errors import DataError
from autolite.eval.forward import ensure_pad_token

OPS = ("clean", "crop", "concat", "replace", "drop", "random")
_WORD_PREFIXES = ("Ġ", "▁")
CONCAT_TOKENS = 64  # concatenations stop here (long samples would pad the whole batch)


def word_token_ids(tokenizer: Any, limit: int = 60000) -> list[int]:
    """Ids of whole-word alphabetic tokens of the vocabulary (no subword continuations, no specials)."""
    special = set(tokenizer.all_special_ids)
    words = []
    for token, index in tokenizer.get_vocab().items():
        if index in special or index >= limit or token.startswith("##"):
            continue
        stripped = token.lstrip("".join(_WORD_PREFIXES))
        if len(stripped) >= 2 and stripped.isascii() and stripped.isalpha():
            words.append(index)
    return sorted(words)


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (e.g. [CLS] / [SEP], or BOS)."""
    full = tokenizer("hello world")["input_ids"]
    bare = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


class Augmenter:
    """Makes batch ``step`` of ``texts``: a mix of clean and augmented samples (``augment`` = share augmented)."""

    def __init__(self, tokenizer: Any, texts: list[str], max_length: int, augment: float = 0.7,
                 seed: int = 0) -> None:
        if not texts:
            raise DataError("no training texts")
        self.tokenizer = ensure_pad_token(tokenizer)
        self.max_length, self.augment, self.seed = max_length, augment, seed
        self.prefix, self.suffix = special_affixes(tokenizer)
        budget = max(max_length - len(self.prefix) - len(self.suffix), 1)
        self.ids = [ids[:budget] or [tokenizer.unk_token_id or 0]
                    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        self.corpus_tokens = sorted({t for ids in self.ids for t in ids})
        self.words = word_token_ids(tokenizer) or self.corpus_tokens
        self.budget = budget

    def sample(self, index: int, rng: random.Random) -> list[int]:
        """Token ids (without specials) of one training sample built from text ``index``."""
        ids = self.ids[index]
        if rng.random() >= self.augment:
            return list(ids)
        op = rng.choice(OPS[1:])
        if op == "crop" and len(ids) > 4:
            length = rng.randint(max(3, len(ids) // 4), len(ids) - 1)
            start = rng.randint(0, len(ids) - length)
            return ids[start:start + length]
        if op == "concat":
            other = self.ids[rng.randrange(len(self.ids))]
            cut = rng.randint(max(1, len(other) // 3), len(other))
            return (ids + other[:cut])[:min(self.budget, max(len(ids), CONCAT_TOKENS))]
        if op == "replace":
            rate = rng.uniform(0.1, 0.3)
            return [self._random_token(rng) if rng.random() < rate else t for t in ids]
        if op == "drop" and len(ids) > 3:
            rate = rng.uniform(0.1, 0.25)
            kept = [t for t in ids if rng.random() >= rate] or ids[:1]
            for _ in range(max(1, len(kept) // 10)):
                i = rng.randrange(len(kept))
                j = min(len(kept) - 1, i + 1)
                kept[i], kept[j] = kept[j], kept[i]
            return kept
        if op == "random":
            return [self._random_token(rng) for _ in range(rng.randint(4, min(40, self.budget)))]
        return list(ids)

    def _random_token(self, rng: random.Random) -> int:
        pool = self.words if rng.random() < 0.5 else self.corpus_tokens
        return pool[rng.randrange(len(pool))]

    def batch(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        """Padded ``input_ids``/``attention_mask`` of the samples built from ``indices`` at ``step``."""
        rng = random.Random(self.seed * 1_000_003 + step)
        rows = [self.prefix + self.sample(i, rng) + self.suffix for i in indices]
        return pad(rows, self.tokenizer.pad_token_id or 0)


def pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest one."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
