"""The user's labeled data for a search: checked, split once (the test share set aside first), scored.

Splits are drawn with a fixed seed before any trial runs and stored by index in the search state, so a
resumed search scores on exactly the same rows. ``calib`` feeds the passes (calibration, recovery, exit
heads); ``val`` scores the trials (its first ``SMALL_VAL`` rows are the cheap first-stage proxy); ``test``
is read only for the final pick and the FP32 model beside it.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch

from autolite.data import TextData
from autolite.errors import DataError
from autolite.eval.forward import tokenize

TEST_SHARE = 0.2  # of --data, when no --test file is given
VAL_SHARE = 0.3  # of what is left: the rest calibrates the passes
SMALL_VAL = 96  # rows of the first-stage accuracy proxy
MIN_ROWS = 20


@dataclasses.dataclass
class Splits:
    """Disjoint calibration / validation / test rows, and where the test rows came from."""

    calib: TextData
    val: TextData
    test: TextData
    test_source: str

    @property
    def small_val(self) -> TextData:
        return self.val.head(min(SMALL_VAL, len(self.val)))


def read_labeled(path: str | Path, what: str) -> tuple[list[str], list[str]]:
    """Texts and raw labels (class ids or the model's label names) of a .csv/.jsonl file with ``text`` and
    ``label`` on every row, else a one-line error."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"{what} {path} must be a .csv or .jsonl file with 'text' and 'label'")
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{what} {path} is not readable UTF-8 CSV/JSONL ({str(exc).splitlines()[0]})") from exc
    rows = [r for r in rows if isinstance(r, dict) and str(r.get("text") or "").strip()]
    if not rows:
        raise DataError(f"{what} {path} holds no rows with a 'text'")
    if any(str(r.get("label") if r.get("label") is not None else "").strip() == "" for r in rows):
        raise DataError(f"{what} {path} has no labels (or some rows lack one): autolite optimize needs a 'label' "
                        "column (class ids or the model's label names) on every row")
    return [str(r["text"]).strip() for r in rows], [str(r["label"]).strip() for r in rows]


def label_ids(raw: list[str], config: Any, what: str) -> list[int]:
    """Class ids of ``raw`` labels: integers as given, names through the model's ``label2id``; every one
    must be a class of the model's head."""
    classes = int(config.num_labels)
    if all(label.lstrip("-").isdigit() for label in raw):
        ids = [int(label) for label in raw]
        outside = sorted({i for i in ids if not 0 <= i < classes})
        if outside:
            raise DataError(f"{what} has label(s) {outside[:5]} but the model's head has {classes} classes "
                            f"(0..{classes - 1}): the label set differs from the model's; pass data labeled for it")
        return ids
    names = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise DataError(f"{what} has label(s) {unknown[:5]} that the model's head does not have (its labels: "
                        f"{', '.join(sorted(names)[:12])}): the label set differs from the model's")
    return [names[label] for label in raw]


def num_labels(model: torch.nn.Module) -> int:
    """Classes of the model's sequence-classification head; a one-line error for a model without one."""
    if "ForSequenceClassification" not in type(model).__name__:
        raise DataError(f"the model is a {type(model).__name__}, not a sequence classifier: autolite optimize scores "
                        "accuracy on labeled data, so give a model with a classification head")
    return int(model.config.num_labels)


def fingerprint(*datas: TextData) -> str:
    """A hash of texts and labels (a resumed search must see the same data)."""
    digest = hashlib.sha256()
    for data in datas:
        for text, label in zip(data.texts, data.labels or [None] * len(data)):
            digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def split_indices(n: int, has_test: bool, has_calib: bool = False, seed: int = 0) -> dict[str, list[int]]:
    """Shuffled, disjoint row indices of --data: test (unless a --test file is given), val, calib (unless a
    --calib file is given: then the rest is all validation)."""
    if n < MIN_ROWS:
        raise DataError(f"--data has {n} labeled rows; autolite optimize needs at least {MIN_ROWS} "
                        "(to calibrate, validate and test)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = 0 if has_test else max(1, round(TEST_SHARE * n))
    rest = order[n_test:]
    n_val = len(rest) if has_calib else max(4, round(VAL_SHARE * len(rest)))
    return {"test": order[:n_test], "val": rest[:n_val], "calib": rest[n_val:]}


def make_splits(data: TextData, test: TextData | None, indices: dict[str, list[int]],
                calib: TextData | None = None) -> Splits:
    def pick(rows: list[int], name: str) -> TextData:
        return TextData([data.texts[i] for i in rows], [data.labels[i] for i in rows], f"{data.source}:{name}")

    calib = calib if calib is not None else pick(indices["calib"], "calib")
    if test is None:
        return Splits(calib, pick(indices["val"], "val"), pick(indices["test"], "test"),
                      f"held-out {TEST_SHARE:.0%} of --data ({len(indices['test'])} rows, set aside before the search)")
    return Splits(calib, pick(indices["val"], "val"), test, f"--test {test.source} ({len(test)} rows)")


def labeled_file(path: str | Path, config: Any, what: str) -> TextData:
    """A labeled file as TextData with the model head's class ids."""
    texts, raw = read_labeled(path, what)
    return TextData(texts, label_ids(raw, config, what), str(path))


@torch.no_grad()
def predictions(model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int,
                batch_size: int = 32) -> torch.Tensor:
    """Predicted class per text ``(N,)``; texts run length-sorted (little padding), results in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in rows], max_length)
        logits = model(**batch).logits  # (B, C)
        out[torch.tensor(rows)] = logits.float().argmax(-1)
    return out


def accuracy(model: torch.nn.Module, tokenizer: Any, data: TextData, max_length: int) -> float:
    """Accuracy in percent on ``data``'s labels."""
    predicted = predictions(model, tokenizer, data.texts, max_length)
    return 100.0 * float((predicted == torch.tensor(data.labels)).float().mean())
