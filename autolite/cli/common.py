"""Options and helpers shared by the CLI verbs."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from autolite.io import write_json_atomic  # noqa: F401 - the verbs' --json writer
from autolite.paths import check_output_file

console = Console()
err_console = Console(stderr=True)

# Every option declares its type and range once, here or in its verb's signature (typer min/max): the
# range is checked before any work, and a value outside it is a usage mistake (exit 2, option named).
MODEL_ARG = typer.Argument("minilm", help="minilm | smollm2 | random:<preset> | HF directory | .gguf file")
RECIPE_OPT = typer.Option("default", "--recipe", "-r", help="Preset name or YAML/JSON recipe file.")
DATA_OPT = typer.Option(None, "--data", help="Text file (.txt/.csv/.jsonl with text[,label]); default: embedded "
                                             "corpus.")
BATCH_OPT = typer.Option(8, "--batch", min=1, help="Sequences per timed forward.")
SEQ_OPT = typer.Option(128, "--seq", min=2, help="Tokens per sequence (at most the model's positions).")
RUNS_OPT = typer.Option(10, "--runs", min=5, help="Timed runs per model (>= 5 for a meaningful median), after warm-up.")
WARMUP_OPT = typer.Option(2, "--warmup", min=0, help="Untimed warm-up runs per model.")
THREADS_OPT = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: torch's choice).")
MAX_TEXTS_OPT = typer.Option(None, "--max-texts", min=1, help="Use at most N texts.")
FORCE_OPT = typer.Option(False, "--force", metavar="", help="Replace the output if it exists.")


def output_file(value: Path | None) -> Path | None:
    """typer callback: a file path autolite can write atomically (not a directory, parent not a file); an
    impossible one is a reported error (exit 1, like an impossible --out), raised before any work."""
    return None if value is None else check_output_file(value)


JSON_OPT = typer.Option(None, "--json", callback=output_file, help="Also write the result to this JSON file.")


def positive(value: float | None) -> float | None:
    """typer callback: a finite number > 0 (typer's min cannot say "open", and lets NaN through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g} is not a finite number > 0")
    return value


def non_negative(value: float) -> float:
    """typer callback: a finite number >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value:g} is not a finite number >= 0")
    return value


def fraction(value: float) -> float:
    """typer callback: a share in [0, 1)."""
    if not 0 <= value < 1:
        raise typer.BadParameter(f"{value:g} is not in [0, 1)")
    return value


def flag(default: bool, *decls: str, help: str) -> Any:
    """A boolean option shown without a ``<bool>`` type column (``--x/--no-x`` already says it)."""
    return typer.Option(default, *decls, metavar="", help=help)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Any]:
    """A rich progress bar (spinner when ``total`` is None); yields a zero-argument ``advance``."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(escape(description), total=total)  # paths like [/tmp/x.yaml] are not markup
        yield lambda: progress.advance(task)


def rows_table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=escape(title), title_justify="left")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    return table
