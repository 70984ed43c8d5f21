"""A real labeled task: classify Debian ``fortunes`` quotes by their category file, on a fine-tuned MiniLM.

The texts come from the Debian package ``fortunes`` (``/usr/share/games/fortunes``; one category per file,
entries separated by ``%`` lines). No one here wrote them. The script

1. builds a balanced multi-class task from ``CATEGORIES`` (entries de-duplicated across files, whitespace
   collapsed, texts of 20..600 characters, at most ``PER_CLASS`` per class), split train/val/test 60/20/20 with
   a fixed seed; the test split is never used by any search, calibration or recovery;
2. writes ``train.csv``, ``val.csv``, ``test.csv`` (columns ``text,label``; labels are category names);
3. fine-tunes the bundled all-MiniLM-L6-v2 encoder (its top two layers, pooler and head) as ``BertForSequenceClassification`` (id2label/label2id
   set) and saves it (safetensors + tokenizer) to ``<cache>/tasks/fortunes/model``;
4. writes ``fp32.json`` beside it (and to ``benchmarks/results/dynamic/task_fortunes.json``) with the FP32
   validation and test accuracy.

Everything is cached under ``$AUTOLITE_CACHE/tasks/fortunes`` (default ``~/.cache/autolite``); a rerun reuses
the CSVs and the model when present (``--force`` rebuilds). Run::

    .venv/bin/python benchmarks/task_fortunes.py            # ~5-10 minutes on 2 cores the first time
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import re
import sys
import time
from pathlib import Path

import torch
import transformers

from autolite.cache import cache_root
from autolite.data import TextData
from autolite.errors import DataError
from autolite.eval.fidelity import evaluate
from autolite.io import atomic_dir
from autolite.loading import load_dir, minilm_dir

log = logging.getLogger("task_fortunes")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
CATEGORIES = ["computers", "science", "politics", "law", "food", "sports", "startrek", "love"]
PER_CLASS = 250
SEED = 1234
MAX_LENGTH = 128  # evaluation
TRAIN_LENGTH = 64  # fine-tuning (median text: 28 tokens)
TRAINED_LAYERS = 2  # fine-tuned top layers (+ pooler and head); the lower ones stay as pre-trained
RESULTS = Path(__file__).resolve().parent / "results" / "dynamic" / "task_fortunes.json"


def task_dir() -> Path:
    """Where the CSVs, the fine-tuned model and fp32.json live."""
    return cache_root() / "tasks" / "fortunes"


def read_entries(category: str) -> list[str]:
    """The entries of one fortunes file: whitespace collapsed, 20..600 characters."""
    path = FORTUNES_DIR / category
    if not path.is_file():
        raise DataError(f"{path} is missing; install the Debian package: apt-get install -y fortunes")
    raw = path.read_text(encoding="utf-8", errors="replace")
    entries = [" ".join(chunk.split()) for chunk in re.split(r"^%\s*$", raw, flags=re.M)]
    return [e for e in entries if 20 <= len(e) <= 600]


def build_splits(seed: int = SEED) -> dict[str, list[tuple[str, str]]]:
    """Balanced, de-duplicated (text, label name) rows split 60/20/20 per class."""
    per_cat = {c: read_entries(c) for c in CATEGORIES}
    counts: dict[str, int] = {}
    for entries in per_cat.values():
        for text in set(entries):
            counts[text] = counts.get(text, 0) + 1
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for cat, entries in per_cat.items():
        unique = sorted({e for e in entries if counts[e] == 1})
        rng.shuffle(unique)
        unique = unique[:PER_CLASS]
        n_val = n_test = len(unique) // 5
        splits["test"] += [(t, cat) for t in unique[:n_test]]
        splits["val"] += [(t, cat) for t in unique[n_test:n_test + n_val]]
        splits["train"] += [(t, cat) for t in unique[n_test + n_val:]]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def write_csvs(directory: Path, splits: dict[str, list[tuple[str, str]]]) -> None:
    with atomic_dir(directory / "data", overwrite=True) as tmp:
        for name, rows in splits.items():
            with (tmp / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text", "label"])
                writer.writerows(rows)


def read_labeled(path: Path, label2id: dict[str, int]) -> TextData:
    """A ``text,label`` CSV with label names, as TextData with the model's class ids."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    unknown = sorted({r["label"] for r in rows} - set(label2id))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not in the model's label set {sorted(label2id)}")
    return TextData([r["text"] for r in rows], [label2id[r["label"]] for r in rows], str(path))


def accuracy(model: torch.nn.Module, tokenizer, data: TextData, batch_size: int = 32) -> float:
    """Accuracy on labeled data through ``autolite.evaluate`` (task accuracy)."""
    return float(evaluate(model, tokenizer, data=data, batch_size=batch_size, max_length=MAX_LENGTH)["accuracy"])


def length_batches(texts: list[str], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length texts (less padding: ~2x faster fine-tuning on a CPU)."""
    order = list(range(len(texts)))
    rng.shuffle(order)
    pool = batch_size * 8
    batches = []
    for begin in range(0, len(order), pool):
        chunk = sorted(order[begin:begin + pool], key=lambda i: len(texts[i]))
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def fine_tune(train: TextData, tokenizer, epochs: int, lr: float, batch_size: int) -> torch.nn.Module:
    """Fine-tune MiniLM for classification: the top ``TRAINED_LAYERS`` layers, pooler and head (AdamW, linear
    warm-up/decay, seeded). The frozen lower layers run once per batch (cached): on two shared cores a full
    fine-tune took over an hour."""
    torch.manual_seed(SEED)
    id2label = {i: c for i, c in enumerate(CATEGORIES)}
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(CATEGORIES), id2label=id2label,
        label2id={c: i for i, c in id2label.items()})
    frozen = len(model.bert.encoder.layer) - TRAINED_LAYERS
    cached = frozen_features(model, tokenizer, train, batch_size, frozen)
    top = model.bert.encoder.layer[frozen:]
    params = [*top.parameters(), *model.bert.pooler.parameters(), *model.classifier.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * len(cached)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    rng = random.Random(SEED)
    model.train()
    step, start = 0, time.time()
    for epoch in range(epochs):
        rng.shuffle(cached)
        for hidden, mask, labels in cached:  # (B, T, H), (B, 1, 1, T) additive, (B,)
            for layer in top:
                hidden = layer(hidden, mask)
            logits = model.classifier(model.dropout(model.bert.pooler(hidden)))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0:
                log.info("epoch %d step %d/%d loss %.3f (%.0f s)", epoch, step, steps, loss.item(), time.time() - start)
    return model.eval()


@torch.no_grad()
def frozen_features(model: torch.nn.Module, tokenizer, train: TextData, batch_size: int,
                    frozen: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(hidden after the frozen layers, additive mask, labels) for each length-bucketed training batch."""
    model.eval()
    cached = []
    for idx in length_batches(train.texts, batch_size, random.Random(SEED)):
        enc = tokenizer([train.texts[i] for i in idx], padding=True, truncation=True,
                        max_length=TRAIN_LENGTH, return_tensors="pt")
        mask = (1.0 - enc["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        hidden = model.bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        for layer in model.bert.encoder.layer[:frozen]:
            hidden = layer(hidden, mask)
        cached.append((hidden, mask, torch.tensor([train.labels[i] for i in idx])))
    return cached


def _recorded(root: Path) -> dict:
    """The record the last build wrote (empty if none or unreadable)."""
    try:
        return json.loads((root / "fp32.json").read_text())
    except (OSError, ValueError):
        return {}


def build(force: bool = False, epochs: int = 4, lr: float = 2e-4, batch_size: int = 16) -> dict:
    """Build (or reuse) the CSVs and the fine-tuned model; return the FP32 accuracy record."""
    root = task_dir()
    if force or not (root / "data" / "test.csv").is_file():
        write_csvs(root, build_splits())
    model_dir = root / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    label2id = {c: i for i, c in enumerate(CATEGORIES)}
    data = {s: read_labeled(root / "data" / f"{s}.csv", label2id) for s in ("train", "val", "test")}
    started = time.time()
    if force or not (model_dir / "config.json").is_file():
        model = fine_tune(data["train"], tokenizer, epochs, lr, batch_size)
        with atomic_dir(model_dir, overwrite=True) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        train_s = time.time() - started
    else:  # reused: the fine-tune's time is the one recorded when it ran (not this run's 0 s)
        train_s = _recorded(root).get("fine_tune_s")
    model, tokenizer, _ = load_dir(model_dir)
    record = {"task": "fortunes", "categories": CATEGORIES, "seed": SEED, "max_length": MAX_LENGTH,
              "sizes": {s: len(d) for s, d in data.items()}, "data_dir": str(root / "data"),
              "model_dir": str(model_dir), "fine_tune_s": None if train_s is None else round(train_s, 1),
              "fine_tune": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": TRAIN_LENGTH,
                            "trained_layers": TRAINED_LAYERS},
              "fp32_val_accuracy": accuracy(model, tokenizer, data["val"]),
              "fp32_test_accuracy": accuracy(model, tokenizer, data["test"]),
              "torch_threads": torch.get_num_threads()}
    (root / "fp32.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild the CSVs and re-fine-tune")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine, 2 threads mostly wait for each other)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    try:
        record = build(force=args.force, epochs=args.epochs, lr=args.lr)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    shown = {k: v for k, v in record.items() if k not in ("data_dir", "model_dir")}  # no machine paths in the repo
    RESULTS.write_text(json.dumps(shown, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
