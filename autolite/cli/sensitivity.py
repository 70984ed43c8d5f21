"""``autolite sensitivity``: per-layer quantization sensitivity table + heat map (+ a mixed-precision plan)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

import autolite
from autolite.cli.common import DATA_OPT, FORCE_OPT, MODEL_ARG, console, flag, positive, progress_bar, rows_table
from autolite.config import Recipe
from autolite.data import load_texts
from autolite.export.hf import write_model_files
from autolite.io import atomic_dir
from autolite.paths import check_output_dir
from autolite.quant import sensitivity as sens
from autolite.quant.formats import parse_format
from autolite.quant.mixed import (MixedPrecision, allocate_bits, average_bits, check_budget, expand_units,
                                  unit_bits_table)
from autolite.quant.sensitivity import table_rows


def sensitivity(model: str = MODEL_ARG, data: Path = DATA_OPT,
                out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
                bits: str = typer.Option("8,6,4,3,2", "--bits", help="Bit widths or engine formats to probe, "
                                         "e.g. 8,4,2 or w8,w4g32,w4g64,w4g128."),
                group_size: int = typer.Option(64, "--group-size", min=1, help="Weights per quantization scale."),
                granularity: str = typer.Option("linear", "--granularity", help="linear | layer"),
                texts: int = typer.Option(16, "--texts", min=1, help="Calibration texts per probe."),
                max_length: int = typer.Option(64, "--max-length", min=2, help="Tokens per text."),
                gradient: bool = flag(True, "--gradient/--no-gradient", help="Also the Fisher estimate."),
                output: bool = flag(False, "--output/--no-output",
                                            help="Also the output-space Fisher estimate (used for --budget)."),
                measure: bool = flag(True, "--measure/--no-measure",
                                             help="Measure each probe (slow on big models); else Fisher only."),
                budget: float = typer.Option(None, "--budget", callback=positive,
                                             help="Average bits/weight: also write a mixed recipe and the model "
                                                  "quantized with it."),
                force: bool = FORCE_OPT) -> None:
    """Measure how much each layer's quantization to each bit width hurts MODEL's outputs."""
    check_output_dir(out, overwrite=force)
    widths = _widths(bits)
    calib = load_texts(data, split="calib")
    with progress_bar(f"loading {model}"):
        net, tokenizer, family = autolite.load(model)
    if budget is not None:  # fail before the analysis when no allocation can meet the budget
        check_budget(net, sens.sensitivity_units(net, family, granularity), list(widths), group_size, budget)
    units = len(sens.sensitivity_units(net, family, granularity))
    with progress_bar(f"probing {units} units x {len(widths)} widths", total=units * len(widths)) as advance:
        table = sens.analyze(net, tokenizer, family, calib.texts, bits=widths, group_size=group_size,
                             granularity=granularity, max_texts=texts, max_length=max_length,
                             gradient=gradient or not (measure or output), measured=measure, output=output,
                             progress=advance)
    which = "measured" if measure else "output" if output else "estimated"
    with atomic_dir(out, overwrite=force) as tmp:
        sens.write_csv(table, tmp / "sensitivity.csv")
        sens.heatmap(table, tmp / "heatmap.png", which=which)
        for other in ("estimated", "output"):
            if getattr(table, other) and other != which:
                sens.heatmap(table, tmp / f"heatmap_{other}.png", which=other)
        (tmp / "sensitivity.json").write_text(json.dumps(table.to_dict(), indent=1), encoding="utf-8")
        chosen = "output" if output else which
        plan_md = _mixed(net, tokenizer, family, table, budget, tmp, chosen) if budget is not None else ""
        (tmp / "sensitivity.md").write_text(_markdown(model, table) + plan_md, encoding="utf-8")
    rows = [tuple(r) for r in sens.table_rows(table, which)]
    console.print(rows_table(f"{model}: {table.metric}", rows[0], rows[1:]))
    console.print(f"wrote {out}/ (sensitivity.csv, sensitivity.md, heatmap.png"
                  f"{', mixed.yaml, model/' if budget is not None else ''})")


def _widths(text: str) -> tuple:
    values = [int(b) if b.strip().isdigit() else b.strip().lower() for b in text.split(",") if b.strip()]
    for value in values:
        parse_format(value, 64)  # raises a RecipeError naming the bad one
    return tuple(sorted(set(values), key=lambda v: (-parse_format(v, 64)[0], str(v))))


def _markdown(model: str, table) -> str:
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
    bpw = unit_bits_table(net, table.members, list(table.bits), table.group_size)
    plan = allocate_bits(getattr(table, which), table.numel, budget, table.group_size, bpw=bpw)
    avg = average_bits(plan, table.numel, table.group_size, bpw)
    config = MixedPrecision(bits=expand_units(plan, table.members), group_size=table.group_size)
    Recipe(passes=[config], name=f"mixed-{budget}").save(tmp / "mixed.yaml")
    quantized = autolite.compress(net, [config], tokenizer=tokenizer, family=family, inplace=True)  # net unused after
    (tmp / "model").mkdir()
    write_model_files(quantized, tokenizer, tmp / "model")
    counts = {str(b): sum(1 for v in plan.values() if v == b) for b in set(plan.values())}
    return (f"\n## Mixed-precision plan for {budget} bits/weight\n\nAverage {avg:.4f} stored bits/weight (scales and "
            "zeros counted); "
            f"units per format: {counts}. Recipe: `mixed.yaml`; model (INT4/INT8 formats stored packed by the engine, "
            "other widths simulated): `model/`.\n")


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite sensitivity smollm2 --out sens/ --budget 4.5")(sensitivity)
