"""Text data: the embedded English corpus and user files (txt, CSV, JSONL with ``text``[, ``label``])."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from autolite.errors import DataError

CORPUS_PATH = Path(__file__).with_name("corpus.txt")
HELDOUT_EVERY = 5  # every 5th corpus sentence is held out from calibration/training


@dataclasses.dataclass
class TextData:
    """Texts and, when the source had them, integer labels (same length)."""

    texts: list[str]
    labels: list[int] | None = None
    source: str = "corpus"

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "TextData":
        if n is None:
            return self
        labels = self.labels[:n] if self.labels is not None else None
        return TextData(self.texts[:n], labels, self.source)


def corpus(split: str = "all") -> TextData:
    """The embedded public-domain corpus (see CORPUS_LICENSE.md).

    ``split``: "all", "calib" (for calibration and training) or "heldout" (every 5th sentence).
    """
    lines = [line.strip() for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    if split == "all":
        texts = lines
    elif split == "heldout":
        texts = lines[::HELDOUT_EVERY]
    elif split == "calib":
        texts = [t for i, t in enumerate(lines) if i % HELDOUT_EVERY]
    else:
        raise DataError(f"unknown corpus split '{split}'; use all, calib or heldout")
    return TextData(texts, None, f"corpus:{split}")


def load_texts(path: str | Path | None = None, split: str = "all", label2id: dict[str, int] | None = None) -> TextData:
    """Read texts (and labels) from a .txt (one text per line), .csv or .jsonl file; None = the corpus.

    Labels are class ids, or class names mapped through ``label2id`` (a model's ``config.label2id``)."""
    if path is None:
        return corpus(split)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    readers = {".txt": _read_txt, ".csv": _read_csv, ".jsonl": _read_jsonl}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"data file {path} must be .txt, .csv or .jsonl")
    try:
        texts, labels = reader(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not texts:
        raise DataError(f"data file {path} holds no text; give at least one non-empty line/row")
    return TextData(texts, _label_ids(labels, label2id, path), str(path))


def _read_txt(path: Path) -> tuple[list[str], None]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], None


def _read_csv(path: Path) -> tuple[list[str], list[int] | None]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = reader.fieldnames or []
    if "text" not in columns:
        raise DataError(f"CSV {path} needs a 'text' column (found: {', '.join(columns) or 'no header'})")
    return _texts_and_labels(rows, path)


def _read_jsonl(path: Path) -> tuple[list[str], list[int] | None]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "text" not in row:
            raise DataError(f"{path}:{number} needs an object with a 'text' field")
        rows.append(row)
    return _texts_and_labels(rows, path)


def _texts_and_labels(rows: list[dict], path: Path) -> tuple[list[str], list[int] | None]:
    rows = [r for r in rows if str(r.get("text") or "").strip()]
    texts = [str(r["text"]).strip() for r in rows]
    if not rows or not all(r.get("label") not in (None, "") for r in rows):
        return texts, None
    return texts, [r["label"] for r in rows]


def _label_ids(labels: list | None, label2id: dict[str, int] | None, path: Path) -> list[int] | None:
    """Class ids as given, or class names mapped through ``label2id`` (case-insensitive)."""
    if labels is None:
        return None
    try:
        return [int(label) for label in labels]
    except (TypeError, ValueError):
        pass
    names = {str(name).lower(): int(i) for name, i in (label2id or {}).items()}
    unknown = sorted({str(label) for label in labels if str(label).strip().lower() not in names})
    if not names or unknown:
        known = ", ".join(sorted(label2id or {})) or "no label2id given"
        raise DataError(f"{path}: label(s) {unknown[:3] or sorted(set(map(str, labels)))[:3]} are neither class "
                        f"ids nor names of the model's classes ({known})")
    return [names[str(label).strip().lower()] for label in labels]
