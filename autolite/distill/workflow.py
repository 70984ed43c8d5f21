"""The distillation workflow behind ``autolite distill``: data, layer choice, training, timing, saved report.

::

    summary = distill_to_dir("minilm", "student/", config=train_config(steps=200), student_layers=3)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, ContextManager

from torch import nn

from autolite.data import TextData, load_texts
from autolite.data.distill_corpus import distill_training_texts
from autolite.distill.report import curve_plot, curve_rows, distill_markdown, split_heldout
from autolite.distill.student import build_student, search_layers, select_layers
from autolite.distill.train import TrainConfig, TrainResult, distill, final_metric
from autolite.errors import AutoliteError, DataError, RecipeError
from autolite.eval.compare import compare
from autolite.export.hf import write_model_files
from autolite.io import atomic_dir
from autolite.loading import load

EVAL_TEXTS = 256  # held-out texts evaluated (all 92 of the embedded corpus' held-out split)
DEFAULT_MINUTES = 5.0  # the training budget when neither steps nor minutes is given
Stage = Callable[..., ContextManager[Callable[[], None]]]  # stage(description, total=None) -> advance()
Progress = Callable[[int, dict[str, Any]], None]  # progress(step, record) after each training step


@contextlib.contextmanager
def quiet_stage(description: str, total: int | None = None):
    """The default :data:`Stage`: shows nothing."""
    yield lambda: None


def train_config(*, steps: int | None = None, minutes: float | None = None, **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` with ``DEFAULT_MINUTES`` as the budget when neither ``steps`` nor ``minutes`` is set."""
    if steps is None and minutes is None:
        minutes = DEFAULT_MINUTES
    return TrainConfig(steps=steps, minutes=minutes, **options)


def training_data(path: Path | None, extra_text: bool = False, calib_share: float | None = None
                  ) -> tuple[TextData, TextData]:
    """(train, held-out): ``path`` split 4:1, or the bundled corpus (the held-out split is never trained on)."""
    if path is None:
        return distill_training_texts(extra_text, calib_share), load_texts(None, split="heldout")
    try:
        return split_heldout(load_texts(path))
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc


def parse_layers(text: str) -> list[int]:
    """``"0,2,5"`` -> ``[0, 2, 5]``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise RecipeError(f"--layers must be comma-separated integers, got '{text}'") from exc


def choose_layers(model: nn.Module, tokenizer: Any, family: Any, student_layers: int | None, layers: str | None,
                  init: str, train: TextData, stage: Stage = quiet_stage) -> list[int]:
    """The teacher layers the student keeps: explicit ``layers``, or ``student_layers`` spread evenly
    (``init="even"``) or searched (``init="search"``: the subset whose untrained student best matches)."""
    if (student_layers is None) == (layers is None):
        raise AutoliteError("give exactly one of --student-layers K or --layers 0,2,5")
    if layers is not None:
        return parse_layers(layers)
    if init not in ("search", "even"):
        raise RecipeError(f"--init must be 'search' or 'even', got '{init}'")
    if init == "even":
        return select_layers(len(family.layers(model)), student_layers)
    with stage(f"choosing {student_layers} of the teacher's layers"):
        keep, _score = search_layers(model, family, student_layers, tokenizer, train.texts[:32])
    return keep


def speed_vs_teacher(teacher: nn.Module, student: nn.Module, tokenizer: Any, family: Any, heldout: TextData,
                     stage: Stage = quiet_stage) -> dict[str, Any]:
    """Interleaved latency of student vs teacher at batch 8 x seq 128, sizes and fidelity."""
    with stage("timing student vs teacher (interleaved)", total=10) as advance:
        result = compare(teacher, student, tokenizer, family, batch=8, seq=128, runs=10, data=heldout,
                         fidelity_texts=None, progress=advance)
    return {"batch": 8, "seq": 128, "speedup": result["speedup"], "teacher_ms": result["baseline"]["median_ms"],
            "student_ms": result["candidate"]["median_ms"], "teacher_mb": result["baseline"]["size_mb"],
            "student_mb": result["candidate"]["size_mb"], "fidelity": result["fidelity"]}


def summarize(teacher: str, keep: list[int], result: TrainResult, config: TrainConfig, train: TextData,
              heldout: TextData, key: str, speed: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary as saved in ``distill.json`` and shown in ``report.md``."""
    before = result.history[0].get("eval", {}).get(key) if result.history else None
    return {"teacher": teacher, "student_layers": len(keep), "kept_layers": keep, "steps": result.step,
            "batch_size": config.batch_size,
            "augment": config.augment_share("encoder" if key == "cosine" else "decoder", train.labels is not None),
            "elapsed_s": result.elapsed_s, "stopped": result.stopped, "data": train.source, "seed": config.seed,
            "heldout": min(len(heldout), config.eval_texts), "before": before,
            "after": final_metric(result.history, key), "metric": key, "speed": speed}


def save_student(student: nn.Module, tokenizer: Any, out: Path, summary: dict[str, Any],
                 history: list[dict[str, Any]], key: str, force: bool) -> None:
    """Model files, ``report.md``, ``curve.png`` and ``distill.json``, written atomically to ``out``."""
    rows = curve_rows(history, key)
    with atomic_dir(out, overwrite=force) as tmp:
        write_model_files(student, tokenizer, tmp)
        if curve_plot(rows, key, tmp / "curve.png"):
            summary["plot"] = "curve.png"
        (tmp / "report.md").write_text(distill_markdown(summary, rows, key), encoding="utf-8")
        (tmp / "distill.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1,
                                                     default=str), encoding="utf-8")


def distill_to_dir(teacher: str, out: Path, *, config: TrainConfig, student_layers: int | None = None,
                   layers: str | None = None, init: str = "search", data: Path | None = None,
                   extra_text: bool = False, calib_share: float | None = None, force: bool = False,
                   bench: bool = True, stage: Stage = quiet_stage,
                   progress: Callable[[], ContextManager[Progress]] | None = None) -> dict[str, Any]:
    """Distil ``teacher`` into a student keeping some of its layers and save it with a report in ``out``;
    resumes from ``out.checkpoint`` when a run was interrupted. Returns the summary."""
    if out.exists() and not force:
        raise AutoliteError(f"output directory {out} already exists; choose another --out or pass --force")
    if (student_layers is None) == (layers is None):
        raise AutoliteError("give exactly one of --student-layers K or --layers 0,2,5")
    train, heldout = training_data(data, extra_text, calib_share)
    config = _with_eval_texts(config, heldout)
    with stage(f"loading {teacher}"):
        model, tokenizer, family = load(teacher)
    keep = choose_layers(model, tokenizer, family, student_layers, layers, init, train, stage)
    student = build_student(model, family, keep)
    ckpt = out.with_name(out.name + ".checkpoint")
    key = "cosine" if family.kind == "encoder" else "perplexity"
    with (progress or no_progress)() as on_step:
        result = distill(model, student, tokenizer, family, config, train, heldout, ckpt, progress=on_step)
    speed = speed_vs_teacher(model, result.student, tokenizer, family, heldout, stage) if bench else None
    summary = summarize(teacher, keep, result, config, train, heldout, key, speed)
    save_student(result.student, tokenizer, out, summary, result.history, key, force)
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary


def _with_eval_texts(config: TrainConfig, heldout: TextData) -> TrainConfig:
    return dataclasses.replace(config, eval_texts=min(len(heldout), config.eval_texts))


@contextlib.contextmanager
def no_progress():
    """No per-step progress display."""
    yield None
