"""Extra unlabeled training text for distillation: original English sentences written for autolite.

``distill_corpus.txt`` (see DISTILL_CORPUS.md; CC0) holds sentences on many topics, registers and lengths,
written for this project and checked against the embedded corpus: none equals or paraphrases a sentence of
it. It is for *training only*; the held-out split of the embedded corpus stays the evaluation set.
"""
from __future__ import annotations

from pathlib import Path

from autolite.data import TextData, corpus
from autolite.errors import DataError

DISTILL_CORPUS_PATH = Path(__file__).with_name("distill_corpus.txt")


def distill_corpus() -> TextData:
    """The bundled distillation sentences (one per line of ``distill_corpus.txt``)."""
    lines = [line.strip() for line in DISTILL_CORPUS_PATH.read_text(encoding="utf-8").splitlines()]
    return TextData([line for line in lines if line], None, "distill-corpus")


def distill_training_texts(extra: bool = True, calib_share: float | None = None) -> TextData:
    """Training text for distillation: the corpus' calibration split, plus (``extra``) the distillation corpus.

    Any sentence that also occurs in the held-out split is dropped (the held-out split is never trained on).
    ``calib_share``: repeat the calibration sentences (same sources as the held-out split) so that they make
    up about this share of the training samples; None = each text once.
    """
    calib = corpus("calib")
    if not extra:
        return calib
    if calib_share is not None and not 0.0 < calib_share < 1.0:
        raise DataError(f"calib_share is a share of the training samples, between 0 and 1; got {calib_share}")
    heldout = {text.casefold() for text in corpus("heldout").texts}
    seen, texts = {t.casefold() for t in calib.texts}, []
    for text in distill_corpus().texts:
        key = text.casefold()
        if key not in heldout and key not in seen:
            seen.add(key)
            texts.append(text)
    repeats = 1 if calib_share is None else max(1, round(calib_share / (1 - calib_share) * len(texts) / len(calib)))
    return TextData(calib.texts * repeats + texts, None, "corpus:calib+distill-corpus")
