"""``autolite distill``: build a shallower student from TEACHER, distil it, save it with a report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from autolite.cli.common import DATA_OPT, MODEL_ARG, progress_bar, rows_table

EVAL_TEXTS = 256  # held-out texts evaluated (all 92 of the embedded corpus' held-out split)


def distill(teacher: str = MODEL_ARG,
            student_layers: int = typer.Option(None, "--student-layers", "-k",
                                               help="Layers in the student, spread evenly over the teacher's."),
            layers: str = typer.Option(None, "--layers", help="Explicit teacher layer indices to keep, e.g. 0,2,5."),
            init: str = typer.Option("search", "--init", help="With --student-layers: 'search' keeps the layer "
                                     "subset whose untrained student best matches the teacher; 'even' spreads them."),
            data: Path = DATA_OPT,
            extra_text: bool = typer.Option(False, "--extra-text/--no-extra-text", help="Without --data: also train "
                                            "on the bundled distillation corpus (original sentences; the held-out "
                                            "split is never trained on). Off by default: at 50-200 fixed steps it "
                                            "trailed calibration-only training."),
            calib_share: float = typer.Option(0.5, "--calib-share", help="With --extra-text: repeat the corpus' "
                                              "calibration sentences to about this share of the samples (0: once)."),
            minutes: float = typer.Option(None, "--minutes", help="Training time budget (minutes)."),
            steps: int = typer.Option(None, "--steps", help="Training step budget."),
            out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
            batch_size: int = typer.Option(16, "--batch-size", help="Texts per training step."),
            lr: float = typer.Option(3e-4, "--lr", help="Peak learning rate (AdamW)."),
            attention: float = typer.Option(1.0, "--attention", help="Weight of MiniLM Q/K/V relation alignment."),
            cosine: float = typer.Option(None, "--cosine", help="Weight of the pooled-embedding 1-cos loss "
                                         "(encoders; default 4)."),
            hidden: float = typer.Option(None, "--hidden", help="Weight of the mapped hidden-state MSE."),
            augment: float = typer.Option(None, "--augment", help="Share of augmented training samples 0..1 "
                                          "(default 0.7 for unlabeled encoder text, else 0)."),
            max_length: int = typer.Option(128, "--max-length", help="Tokens per training text."),
            seed: int = typer.Option(0, "--seed"),
            eval_every: int = typer.Option(50, "--eval-every", help="Evaluate on held-out texts every N steps."),
            force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
            bench: bool = typer.Option(True, "--bench/--no-bench", help="Time the student against the teacher.")
            ) -> None:
    """Distil TEACHER into a student keeping --student-layers of its layers; resumes if interrupted."""
    import autolite
    from autolite.cli import console
    from autolite.distill import TrainConfig, build_student
    from autolite.distill import distill as run_distill

    if out.exists() and not force:
        raise autolite.AutoliteError(f"output directory {out} already exists; choose another --out or pass --force")
    if (student_layers is None) == (layers is None):
        raise autolite.AutoliteError("give exactly one of --student-layers K or --layers 0,2,5")
    train, heldout = _data(data, extra_text, calib_share or None)
    config = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, attention=attention, seed=seed,
                         cosine=cosine, hidden=hidden, augment=augment, max_length=max_length,
                         eval_every=eval_every, checkpoint_every=eval_every, eval_texts=min(len(heldout), EVAL_TEXTS),
                         **({} if minutes is not None or steps is not None else {"minutes": 5.0}))
    with progress_bar(f"loading {teacher}"):
        model, tokenizer, family = autolite.load(teacher)
    keep = _keep(model, tokenizer, family, student_layers, layers, init, train)
    student = build_student(model, family, keep)
    ckpt = out.with_name(out.name + ".checkpoint")
    if ckpt.exists():
        console.print(f"resuming from checkpoint {ckpt}")
    key = "cosine" if family.kind == "encoder" else "perplexity"
    with _train_progress(config) as progress:
        result = run_distill(model, student, tokenizer, family, config, train, heldout, ckpt, progress=progress)
    speed = _speed(model, result.student, tokenizer, family, heldout) if bench else None
    summary = _summary(teacher, keep, result, config, train, heldout, key, speed)
    _save(result.student, tokenizer, out, summary, result.history, key, force)
    shutil.rmtree(ckpt, ignore_errors=True)
    console.print(rows_table(f"{teacher} -> {len(keep)}-layer student", ("metric", "value"), _rows(summary, key)))
    console.print(f"saved to {out}/ (loads with autolite.load or transformers; report: {out}/report.md)")


def _keep(model, tokenizer, family, student_layers, layers, init, train) -> list[int]:
    from autolite.distill.student import search_layers, select_layers
    from autolite.errors import RecipeError

    if layers is not None:
        return _parse_layers(layers)
    if init not in ("search", "even"):
        raise RecipeError(f"--init must be 'search' or 'even', got '{init}'")
    if init == "even":
        return select_layers(len(family.layers(model)), student_layers)
    with progress_bar(f"choosing {student_layers} of the teacher's layers"):
        keep, _score = search_layers(model, family, student_layers, tokenizer, train.texts[:32])
    return keep


def _parse_layers(text: str) -> list[int]:
    from autolite.errors import RecipeError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise RecipeError(f"--layers must be comma-separated integers, got '{text}'") from exc


def _data(path: Path | None, extra_text: bool = False, calib_share: float | None = None):
    from autolite.data import load_texts
    from autolite.data.distill_corpus import distill_training_texts
    from autolite.distill.report import split_heldout
    from autolite.errors import DataError

    if path is None:
        return distill_training_texts(extra_text, calib_share), load_texts(None, split="heldout")
    try:
        return split_heldout(load_texts(path))
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc


class _train_progress:
    """A rich bar over steps (or seconds of the time budget) showing the latest loss and metric."""

    def __init__(self, config) -> None:
        self.config = config

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from autolite.cli import err_console

        self.by_steps = self.config.steps is not None
        total = self.config.steps if self.by_steps else self.config.minutes * 60
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err_console)
        self.bar.__enter__()
        self.task = self.bar.add_task("distilling", total=total)
        self.started = None
        self.metric = ""
        return self.update

    def update(self, step: int, record: dict[str, Any]) -> None:
        import time

        self.started = self.started or time.perf_counter()
        for key in ("cosine", "perplexity"):
            if key in record.get("eval", {}):
                self.metric = f" {key} {record['eval'][key]:.4f}"
        done = step if self.by_steps else time.perf_counter() - self.started
        self.bar.update(self.task, completed=done, description=f"step {step} loss {record['loss']:.4f}{self.metric}")

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _speed(teacher, student, tokenizer, family, heldout) -> dict[str, Any]:
    from autolite.eval.compare import compare

    with progress_bar("timing student vs teacher (interleaved)", total=10) as advance:
        result = compare(teacher, student, tokenizer, family, batch=8, seq=128, runs=10, data=heldout,
                         fidelity_texts=None, progress=advance)
    return {"batch": 8, "seq": 128, "speedup": result["speedup"], "teacher_ms": result["baseline"]["median_ms"],
            "student_ms": result["candidate"]["median_ms"], "teacher_mb": result["baseline"]["size_mb"],
            "student_mb": result["candidate"]["size_mb"], "fidelity": result["fidelity"]}


def _summary(teacher, keep, result, config, train, heldout, key, speed) -> dict[str, Any]:
    from autolite.distill.train import final_metric

    before = result.history[0].get("eval", {}).get(key) if result.history else None
    return {"teacher": teacher, "student_layers": len(keep), "kept_layers": keep, "steps": result.step,
            "batch_size": config.batch_size,
            "augment": config.augment_share("encoder" if key == "cosine" else "decoder", train.labels is not None),
            "elapsed_s": result.elapsed_s, "stopped": result.stopped, "data": train.source, "seed": config.seed,
            "heldout": min(len(heldout), config.eval_texts), "before": before,
            "after": final_metric(result.history, key), "speed": speed}


def _save(student, tokenizer, out: Path, summary, history, key, force) -> None:
    from autolite.distill.report import curve_plot, curve_rows, distill_markdown
    from autolite.export.hf import write_model_files
    from autolite.io import atomic_dir

    rows = curve_rows(history, key)
    with atomic_dir(out, overwrite=force) as tmp:
        write_model_files(student, tokenizer, tmp)
        if curve_plot(rows, key, tmp / "curve.png"):
            summary["plot"] = "curve.png"
        (tmp / "report.md").write_text(distill_markdown(summary, rows, key), encoding="utf-8")
        (tmp / "distill.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1,
                                                     default=str), encoding="utf-8")


def _rows(summary, key) -> list[tuple[str, str]]:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [(f"held-out {key} before distillation", fmt(summary["before"])),
            (f"held-out {key} after ({summary['steps']} steps, {summary['elapsed_s']:.0f} s)", fmt(summary["after"]))]
    if summary["speed"]:
        rows.append(("speed-up vs teacher (batch 8 x seq 128)", f"{summary['speed']['speedup']:.2f}x"))
    return rows


def register(app: typer.Typer) -> None:
    app.command()(distill)
