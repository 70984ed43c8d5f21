"""``autolite optimize``: the fastest model within an accuracy budget on the user's labeled data."""
from __future__ import annotations

from pathlib import Path

import typer

from autolite.cli.common import MODEL_ARG, flag, non_negative, rows_table, console, err_console
from autolite.report.html import summary_rows
from autolite.search import optimize as run


def optimize(model: str = MODEL_ARG,
             data: Path = typer.Option(..., "--data", help="Labeled .csv/.jsonl (text, label): calibration, "
                                       "validation and (without --test) a held-out test share."),
             out: Path = typer.Option(..., "--out", "-o", help="Result directory; rerun with it to continue."),
             test: Path = typer.Option(None, "--test", help="Labeled test file the search never sees."),
             calib: Path = typer.Option(None, "--calib", help="Labeled file for calibration and recovery only (e.g. "
                                        "the fine-tuning set); --data is then all validation (and test share)."),
             max_drop: float = typer.Option(1.0, "--max-drop", callback=non_negative, help="Accuracy points the pick may lose vs FP32."),
             objective: str = typer.Option("latency", help="latency | throughput | size"),
             batch: int = typer.Option(32, min=1, help="Batch size speed is measured at."),
             seq: int = typer.Option(128, min=2, help="Tokens per sequence (speed inputs; max length for accuracy)."),
             minutes: float = typer.Option(30.0, help="Search time budget (trials started before it finish)."),
             trials: int = typer.Option(None, min=1, help="Stop after this many new trials."),
             recover_steps: int = typer.Option(200, "--recover-steps", min=0, help="Distillation steps after pruning."),
             backends: str = typer.Option(None, help="Comma-separated dense candidates (default: all native)."),
             ray: bool = flag(False, "--ray", help="Run trials as Ray tasks (pip install 'autolite\\[ray]')."),
             ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster address (default: local)."),
             cores_per_trial: int = typer.Option(2, "--cores-per-trial", min=1, help="Cores (threads) per Ray trial."),
             ) -> None:
    """Search pruning x dynamic inference x precision/backend for MODEL under an accuracy budget; save the pick."""
    result = run(model, str(data), str(out), test=str(test) if test else None, calib=str(calib) if calib else None,
                 max_drop=max_drop,
                 objective=objective, batch=batch, seq=seq, minutes=minutes, trials=trials,
                 recover_steps=recover_steps, backends=backends.split(",") if backends else None, ray=ray,
                 ray_address=ray_address, cores_per_trial=cores_per_trial,
                 progress=lambda message: err_console.print(f"  {message}", highlight=False))
    console.print(rows_table(f"{model}: FP32 eager vs the pick ({len(result['trials'])} trials"
                             f"{', interrupted' if result['interrupted'] else ''})",
                             ("", "FP32 eager", "pick"), [tuple(map(str, r)) for r in summary_rows(result)]))
    console.print(f"saved to {out}/ (autolite.load('{out}'); recipe.yaml, optimize.json, report.html, report.md)")


def register(app: typer.Typer) -> None:
    app.command()(optimize)
