"""``autolite export``: write a model as HF / sentence-transformers / ONNX / MLX and validate it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import autolite
from autolite.cli.common import FORCE_OPT, MAX_TEXTS_OPT, MODEL_ARG, console, flag, progress_bar, rows_table
from autolite.export import FORMATS
from autolite.paths import check_output_dir


def export(ctx: typer.Context, model: str = MODEL_ARG,
           format: str = typer.Option("hf", "--format", "-f", help="hf | st | onnx | mlx | gguf"),
           out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
           precision: str = typer.Option("fp32", help="onnx: fp32 | int8 (ONNX Runtime dynamic quantization)."),
           optimize: bool = flag(False, "--optimize", help="onnx: ONNX Runtime transformer optimizer "
                                                                    "(fused attention where it matches)."),
           bits: Optional[int] = typer.Option(None, "--bits", min=4, max=8, help="mlx: quantize to 4 or 8 bits "
                                              "(MLX group-wise)."),
           group_size: int = typer.Option(64, "--group-size", min=32, max=64, help="mlx: quantization group size, "
                                          "32 or 64."),
           validate: bool = flag(True, "--validate/--no-validate", help="Run the export against the source on the "
                                 "corpus."),
           max_texts: Optional[int] = MAX_TEXTS_OPT, force: bool = FORCE_OPT) -> None:
    """Export MODEL to --out in --format; the export is validated against the source and the difference printed."""
    if format not in FORMATS:  # usage mistakes (exit 2), before any work
        raise typer.BadParameter(f"unknown format '{format}'; supported: {', '.join(FORMATS)}", ctx,
                                 param_hint="'--format'")
    try:
        opts = _format_options(format, precision, optimize, bits, group_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), ctx) from exc
    check_output_dir(out, overwrite=force)
    with progress_bar(f"loading {model}"):
        source, tokenizer, family = autolite.load(model)
    with progress_bar(f"exporting to {format}{' and validating' if validate else ''}"):
        result = autolite.export(source, tokenizer, out, format=format, validate=validate, family=family,
                                 overwrite=force, max_texts=max_texts, **opts)
    rows = [("format", f"{result.format} ({result.precision})")]
    if result.validation is not None:
        v = result.validation
        rows += [("max abs difference", f"{v.max_abs:.3g}"), ("relative L2", f"{v.rel_l2:.3g}"),
                 ("cosine", f"{v.cosine:.7f}"), *((k, f"{val:.6g}") for k, val in v.extra.items()),
                 ("required", v.tolerance), ("compared with", f"{v.against}, {v.texts} texts")]
    else:
        rows.append(("validation", "skipped (--no-validate)"))
    console.print(rows_table(f"{model} -> {format}", ("", "value"), rows))
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)
    console.print(f"saved to {out}/", markup=False)


def _format_options(format: str, precision: str, optimize: bool, bits: Optional[int], group_size: int) -> dict:
    """The exporter's options for ``format``; ValueError for options that belong to another format."""
    if format != "mlx" and bits is not None:
        raise ValueError("--bits/--group-size apply to --format mlx only (ONNX: --precision int8)")
    if format != "onnx" and (precision != "fp32" or optimize):
        raise ValueError("--precision/--optimize apply to --format onnx only (MLX: --bits 4|8)")
    if format == "onnx":
        return {"precision": precision, "optimize": optimize}
    if format == "mlx":
        return {"bits": bits, "group_size": group_size}
    return {}


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite export minilm-int8/ --format onnx --precision int8 "
                "--out minilm-onnx/")(export)
