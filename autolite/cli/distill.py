"""``autolite distill``: build a shallower student from TEACHER, distil it, save it with a report."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from autolite.cli.common import console, err_console
from autolite.cli.common import DATA_OPT, MODEL_ARG, progress_bar, rows_table
from autolite.distill.workflow import EVAL_TEXTS, distill_to_dir, train_config


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
    config = train_config(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, attention=attention,
                          seed=seed, cosine=cosine, hidden=hidden, augment=augment, max_length=max_length,
                          eval_every=eval_every, checkpoint_every=eval_every, eval_texts=EVAL_TEXTS)
    ckpt = out.with_name(out.name + ".checkpoint")
    if ckpt.exists() and (force or not out.exists()):
        console.print(f"resuming from checkpoint {ckpt}")
    summary = distill_to_dir(teacher, out, config=config, student_layers=student_layers, layers=layers, init=init,
                             data=data, extra_text=extra_text, calib_share=calib_share or None, force=force,
                             bench=bench, stage=progress_bar, progress=lambda: TrainProgress(config))
    key = summary["metric"]
    console.print(rows_table(f"{teacher} -> {summary['student_layers']}-layer student", ("metric", "value"),
                             _rows(summary, key)))
    console.print(f"saved to {out}/ (loads with autolite.load or transformers; report: {out}/report.md)")


class TrainProgress:
    """A rich bar over steps (or seconds of the time budget) showing the latest loss and metric."""

    def __init__(self, config) -> None:
        self.config = config

    def __enter__(self):
        self.by_steps = self.config.steps is not None
        total = self.config.steps if self.by_steps else self.config.minutes * 60
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err_console)
        self.bar.__enter__()
        self.task = self.bar.add_task("distilling", total=total)
        self.started = None
        self.metric = ""
        return self.update

    def update(self, step: int, record: dict[str, Any]) -> None:
        self.started = self.started or time.perf_counter()
        for key in ("cosine", "perplexity"):
            if key in record.get("eval", {}):
                self.metric = f" {key} {record['eval'][key]:.4f}"
        done = step if self.by_steps else time.perf_counter() - self.started
        self.bar.update(self.task, completed=done, description=f"step {step} loss {record['loss']:.4f}{self.metric}")

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _rows(summary, key) -> list[tuple[str, str]]:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [(f"held-out {key} before distillation", fmt(summary["before"])),
            (f"held-out {key} after ({summary['steps']} steps, {summary['elapsed_s']:.0f} s)", fmt(summary["after"]))]
    if summary["speed"]:
        rows.append(("speed-up vs teacher (batch 8 x seq 128)", f"{summary['speed']['speedup']:.2f}x"))
    return rows


def register(app: typer.Typer) -> None:
    app.command()(distill)
