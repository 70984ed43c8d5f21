"""``autolite qat``: short quantization-aware training distilled from the FP32 model, saved as real INT4/INT8."""
from __future__ import annotations

from pathlib import Path

import typer

from autolite.cli.common import console
from autolite.cli.common import DATA_OPT, MODEL_ARG, progress_bar, rows_table
from autolite.cli.distill import TrainProgress
from autolite.distill.checkpoint import has_checkpoint
from autolite.distill.workflow import train_config
from autolite.quant.qat_train import format_and_init, qat_to_dir


def qat(model: str = MODEL_ARG,
        fmt: str = typer.Option("w4g64", "--format", "-f", help="w4g32 | w4g64 | w4g128 | w4g256 | w8"),
        data: Path = DATA_OPT,
        extra_text: bool = typer.Option(True, "--extra-text/--no-extra-text", help="Without --data: QAT also "
                                        "trains on the bundled distillation corpus (GPTQ calibrates on the "
                                        "calibration split only)."),
        minutes: float = typer.Option(None, "--minutes", help="Training time budget (minutes)."),
        steps: int = typer.Option(None, "--steps", help="Training step budget."),
        out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Texts per training step."),
        lr: float = typer.Option(2e-5, "--lr", help="Peak learning rate (AdamW) of weights and scales."),
        mode: str = typer.Option("lsq", "--mode", help="lsq (learned scales) | ema | minmax"),
        max_length: int = typer.Option(128, "--max-length", help="Tokens per training text."),
        seed: int = typer.Option(0, "--seed"),
        eval_every: int = typer.Option(25, "--eval-every", help="Evaluate on held-out texts every N steps."),
        init: str = typer.Option("auto", "--init", help="gptq: start from the w4gG preset's GPTQ weights (auto "
                                 "for 4-bit) | search: round-to-nearest with a clipping search (auto for w8)"),
        embedding: bool = typer.Option(True, "--int8-embedding/--float-embedding",
                                       help="With --init gptq: INT8 per-row token embedding, as the presets."),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists.")) -> None:
    """Quantization-aware training of MODEL's linears to --format, distilled from MODEL itself (FP32)."""
    config = train_config(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, max_length=max_length,
                          seed=seed, eval_every=eval_every, checkpoint_every=eval_every, warmup_steps=5,
                          alpha=1.0, temperature=1.0, augment=0.0)
    if format_and_init(fmt, init)[2] == "gptq" and has_checkpoint(out.with_name(out.name + ".checkpoint")):
        console.print(f"resuming from {out.name}.checkpoint: GPTQ skipped (the checkpoint holds the trained weights)")
    summary = qat_to_dir(model, out, config=config, fmt=fmt, data=data, extra_text=extra_text, mode=mode, init=init,
                         embedding=embedding, force=force, stage=progress_bar, progress=lambda: TrainProgress(config))
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in summary.items()]
    console.print(rows_table(f"{model}: QAT to {fmt}", ("metric", "value"), rows))
    console.print(f"saved to {out}/ (packed weight-only modules; reloads with autolite.load)")


def register(app: typer.Typer) -> None:
    app.command()(qat)
