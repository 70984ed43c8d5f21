"""``autolite compress``: apply a recipe, save the model, write report.md with the before/after table."""
from __future__ import annotations

import copy
import datetime
from pathlib import Path

import typer

import autolite
from autolite.cli.common import (BATCH_OPT, DATA_OPT, FORCE_OPT, MODEL_ARG, RECIPE_OPT, RUNS_OPT, SEQ_OPT, console,
                                 flag, progress_bar, rows_table)
from autolite.data import load_texts
from autolite.eval.compare import compare
from autolite.export import hf
from autolite.io import atomic_dir
from autolite.passes import PassContext, load_recipe
from autolite.paths import check_output_dir
from autolite.report.markdown import write_report
from autolite.report.tables import comparison_rows
from autolite.runtime.hardware import probe


def compress(model: str = MODEL_ARG, recipe: str = RECIPE_OPT, data: Path = DATA_OPT,
             out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
             force: bool = FORCE_OPT, batch: int = BATCH_OPT, seq: int = SEQ_OPT, runs: int = RUNS_OPT,
             bench: bool = flag(True, "--bench/--no-bench", help="Measure before/after for report.md.")) -> None:
    """Compress MODEL with a recipe and save it (safetensors + recipe + report.md) to --out."""
    check_output_dir(out, overwrite=force)
    recipe_obj = load_recipe(recipe)
    with progress_bar(f"loading {model}"):
        original, tokenizer, family = autolite.load(model)
    calib = load_texts(data, split="calib", label2id=original.config.label2id)  # label names -> the model's ids
    baseline = copy.deepcopy(original) if bench else None
    ctx = PassContext(family=family, tokenizer=tokenizer, calib=calib.texts, labels=calib.labels,
                      shape=(batch, seq))
    with progress_bar(f"applying recipe {recipe_obj.name}"):
        small = autolite.compress(original, recipe_obj, tokenizer=tokenizer, family=family, ctx=ctx, inplace=True)
    small.config.autolite["source"] = model
    result = None
    if bench:
        result = _measure(baseline, small, tokenizer, family, model, recipe_obj, ctx, batch, seq, runs, data)
    with atomic_dir(out, overwrite=force) as tmp:
        hf.write_model_files(small, tokenizer, tmp)
        if result is not None:
            write_report(result, tmp)
    if result is not None:
        console.print(rows_table(f"{model} with recipe '{recipe_obj.name}'", ("metric", "before (FP32 eager)", "after"),
                                 comparison_rows(result)))
        for note in ctx.notes:
            console.print(f"  note: {note}", markup=False)
    console.print(f"saved to {out}/ (load with autolite.load('{out}'); report: {out}/report.md)", markup=False)


def _measure(baseline, small, tokenizer, family, model, recipe, ctx, batch, seq, runs, data):
    with progress_bar("measuring before/after (interleaved)", total=runs) as advance:
        result = compare(baseline, small, tokenizer, family, batch=batch, seq=seq, runs=runs,
                         data=load_texts(data, split="heldout" if data is None else "all",
                                         label2id=small.config.label2id), progress=advance)
    result.update(model=model, family=family.name, recipe=recipe.to_dict(), notes=ctx.notes,
                  machine=probe().to_dict(), autolite_version=autolite.__version__,
                  timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return result


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite compress minilm --recipe int8-dynamic --out minilm-int8/")(compress)
