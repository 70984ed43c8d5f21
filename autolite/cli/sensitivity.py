"""``autolite sensitivity``: per-layer quantization sensitivity table + heat map (+ a mixed-precision plan)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from autolite.cli.common import DATA_OPT, MODEL_ARG, progress_bar, rows_table


def sensitivity(model: str = MODEL_ARG, data: Path = DATA_OPT,
                out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
                bits: str = typer.Option("8,6,4,3,2", "--bits", help="Bit widths to probe."),
                group_size: int = typer.Option(64, "--group-size", help="Weights per quantization scale."),
                granularity: str = typer.Option("linear", "--granularity", help="linear | layer"),
                texts: int = typer.Option(16, "--texts", help="Calibration texts per probe."),
                max_length: int = typer.Option(64, "--max-length", help="Tokens per text."),
                gradient: bool = typer.Option(True, "--gradient/--no-gradient", help="Also the Fisher estimate."),
                measure: bool = typer.Option(True, "--measure/--no-measure",
                                             help="Measure each probe (slow on big models); else Fisher only."),
                budget: float = typer.Option(None, "--budget", help="Average bits/weight: also write a mixed "
                                             "recipe and the model quantized with it."),
                force: bool = typer.Option(False, "--force", help="Replace --out if it exists.")) -> None:
    """Measure how much each layer's quantization to each bit width hurts MODEL's outputs."""
    import autolite
    from autolite.cli import console
    from autolite.data import load_texts
    from autolite.errors import RecipeError
    from autolite.io import atomic_dir
    from autolite.quant import sensitivity as sens

    if out.exists() and not force:
        raise autolite.AutoliteError(f"output directory {out} already exists; choose another --out or pass --force")
    try:
        widths = tuple(sorted({int(b) for b in bits.split(",")}, reverse=True))
    except ValueError as exc:
        raise RecipeError(f"--bits must be comma-separated integers, got '{bits}'") from exc
    calib = load_texts(data, split="calib")
    with progress_bar(f"loading {model}"):
        net, tokenizer, family = autolite.load(model)
    units = len(sens.sensitivity_units(net, family, granularity))
    with progress_bar(f"probing {units} units x {len(widths)} widths", total=units * len(widths)) as advance:
        table = sens.analyze(net, tokenizer, family, calib.texts, bits=widths, group_size=group_size,
                             granularity=granularity, max_texts=texts, max_length=max_length,
                             gradient=gradient or not measure, measured=measure, progress=advance)
    which = "measured" if measure else "estimated"
    with atomic_dir(out, overwrite=force) as tmp:
        sens.write_csv(table, tmp / "sensitivity.csv")
        sens.heatmap(table, tmp / "heatmap.png", which=which)
        if table.estimated and measure:
            sens.heatmap(table, tmp / "heatmap_estimated.png", which="estimated")
        (tmp / "sensitivity.json").write_text(json.dumps(table.to_dict(), indent=1), encoding="utf-8")
        plan_md = _mixed(net, tokenizer, family, table, budget, tmp, which) if budget is not None else ""
        (tmp / "sensitivity.md").write_text(_markdown(model, table) + plan_md, encoding="utf-8")
    rows = [tuple(r) for r in sens.table_rows(table, which)]
    console.print(rows_table(f"{model}: {table.metric}", rows[0], rows[1:]))
    console.print(f"wrote {out}/ (sensitivity.csv, sensitivity.md, heatmap.png"
                  f"{', mixed.yaml, model/' if budget is not None else ''})")


def _markdown(model: str, table) -> str:
    from autolite.quant.sensitivity import table_rows

    lines = [f"# Quantization sensitivity of {model}", "",
             f"Metric: {table.metric}, when only that unit's weights are fake-quantized (group {table.group_size},"
             " symmetric). `esti` columns: Fisher estimate 0.5*sum(F*dW^2) (relative units).", "",
             "![heat map](heatmap.png)", ""]
    for which in ("measured", "estimated"):
        if getattr(table, which):
            rows = table_rows(table, which)
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]
    return "\n".join(lines)


def _mixed(net, tokenizer, family, table, budget: float, tmp: Path, which: str) -> str:
    """Allocate bits for ``budget``, save the recipe and the quantized model; returns a markdown section."""
    import autolite
    from autolite.config import Recipe
    from autolite.export.hf import write_model_files
    from autolite.quant.mixed import MixedPrecision, allocate_bits, average_bits, expand_units

    plan = allocate_bits(getattr(table, which), table.numel, budget, table.group_size)
    avg = average_bits(plan, table.numel, table.group_size)
    config = MixedPrecision(bits=expand_units(plan, table.members), group_size=table.group_size)
    Recipe(passes=[config], name=f"mixed-{budget}").save(tmp / "mixed.yaml")
    quantized = autolite.compress(net, [config], tokenizer=tokenizer, family=family)
    (tmp / "model").mkdir()
    write_model_files(quantized, tokenizer, tmp / "model")
    counts = {b: sum(1 for v in plan.values() if v == b) for b in sorted(set(plan.values()))}
    return (f"\n## Mixed-precision plan for {budget} bits/weight\n\nAverage {avg:.3f} bits/weight (scales counted); "
            f"units per width: {counts}. Recipe: `mixed.yaml`; model (simulated low-bit weights): `model/`.\n")


def register(app: typer.Typer) -> None:
    app.command()(sensitivity)
