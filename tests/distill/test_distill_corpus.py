"""The bundled distillation corpus: original text, never the held-out split, used by default for training."""
import re

from autolite.data import corpus
from autolite.data.distill_corpus import distill_corpus, distill_training_texts


def _grams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_distill_corpus_is_large_varied_and_disjoint_from_the_embedded_corpus():
    texts = distill_corpus().texts
    assert len(texts) >= 1500 and len({t.casefold() for t in texts}) == len(texts)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 3 and max(lengths) >= 50 and sum(n >= 30 for n in lengths) >= 100
    embedded = corpus("all").texts
    assert not {t.casefold() for t in texts} & {t.casefold() for t in embedded}
    heldout_grams = set().union(*(_grams(t) for t in corpus("heldout").texts))
    shared = [t for t in texts if _grams(t) & heldout_grams]
    assert not shared, shared[:3]  # no 6-word run of any held-out sentence


def test_training_texts_add_the_distill_corpus_and_never_the_heldout_split():
    calib, heldout = corpus("calib").texts, corpus("heldout").texts
    assert distill_training_texts(extra=False).texts == calib
    train = distill_training_texts()
    assert train.texts[:len(calib)] == calib and len(train) == len(calib) + len(distill_corpus())
    assert not set(train.texts) & set(heldout) and train.labels is None


def test_distill_verb_adds_the_extra_text_when_asked():
    from autolite.distill.workflow import training_data

    train, heldout = training_data(None, extra_text=True)
    assert train.source == "corpus:calib+distill-corpus" and heldout.texts == corpus("heldout").texts
    assert len(train) == len(corpus("calib")) + len(distill_corpus())
    assert training_data(None)[0].texts == corpus("calib").texts  # default: the calibration split only


def test_calib_share_repeats_the_in_domain_sentences():
    import pytest

    from autolite.errors import DataError

    calib, extra = corpus("calib").texts, distill_corpus().texts
    train = distill_training_texts(calib_share=0.5).texts
    in_domain = set(calib)
    share = sum(t in in_domain for t in train) / len(train)
    assert abs(share - 0.5) < 0.05 and set(train) == set(calib) | set(extra)
    with pytest.raises(DataError, match="between 0 and 1"):
        distill_training_texts(calib_share=1.0)
