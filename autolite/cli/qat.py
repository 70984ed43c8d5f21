"""``autolite qat``: short quantization-aware training distilled from the FP32 model, saved as real INT4/INT8."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from autolite.cli.common import DATA_OPT, MODEL_ARG, progress_bar, rows_table


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
    import autolite
    from autolite.cli import console
    from autolite.cli.distill import _data
    from autolite.data.distill_corpus import distill_training_texts
    from autolite.distill import TrainConfig
    from autolite.quant.qat import convert_qat
    from autolite.quant.qat_train import run_qat

    if out.exists() and not force:
        raise autolite.AutoliteError(f"output directory {out} already exists; choose another --out or pass --force")
    bits, group, init = _format_and_init(fmt, init)
    budget = {} if minutes is not None or steps is not None else {"minutes": 5.0}
    config = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, max_length=max_length,
                         seed=seed, eval_every=eval_every, checkpoint_every=eval_every, warmup_steps=5,
                         alpha=1.0, temperature=1.0, augment=0.0, **budget)
    train, heldout = _data(data, extra_text)
    # GPTQ calibrates on the calibration split only, not on the extra corpus
    calib = distill_training_texts(extra=False) if extra_text and data is None else train
    with progress_bar(f"loading {model}"):
        base, tokenizer, family = autolite.load(model)
    ckpt = out.with_name(out.name + ".checkpoint")
    from autolite.cli.distill import _train_progress

    start = _gptq_start(base, tokenizer, family, calib.texts, group, embedding, ckpt) if init == "gptq" else None
    with _train_progress(config) as progress:  # after GPTQ: one live progress display at a time
        result = run_qat(base, tokenizer, family, bits, train, config, heldout=heldout, group_size=group,
                         mode=mode, checkpoint_dir=ckpt, progress=progress, init=init, start=start)
    key = "cosine" if family.kind == "encoder" else "perplexity"
    evals = [r["eval"] for r in result.history if r.get("eval", {}).get(key) is not None]
    summary = {"model": model, "format": fmt, "mode": mode, "init": init, "steps": result.step,
               "elapsed_s": result.elapsed_s,
               "stopped": result.stopped, key + "_start": evals[0][key] if evals else None,
               key + "_end": evals[-1][key] if evals else None, "fp32_" + key: (evals[0].get("perplexity_ref")
                                                                              if key == "perplexity" else 1.0)}
    real = convert_qat(result.student.eval())
    _save(real, tokenizer, out, summary, result.history, force)
    shutil.rmtree(ckpt, ignore_errors=True)
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in summary.items()]
    console.print(rows_table(f"{model}: QAT to {fmt}", ("metric", "value"), rows))
    console.print(f"saved to {out}/ (packed weight-only modules; reloads with autolite.load)")


def _format_and_init(fmt: str, init: str) -> tuple[int, int | None, str]:
    """(bits, group, init) for ``--format`` and ``--init``, or a RecipeError that says what would work."""
    from autolite.errors import RecipeError
    from autolite.quant.formats import engine_format, parse_format

    bits, group = parse_format(fmt, 64)
    if engine_format(fmt, 64, 1024) is None:
        raise RecipeError(f"--format {fmt} has no packed engine module; use w4g32/w4g64/w4g128/w4g256/w8")
    if init not in ("auto", "gptq", "search", "minmax"):
        raise RecipeError(f"--init must be auto, gptq, search or minmax, got '{init}'")
    init = ("gptq" if bits == 4 else "search") if init == "auto" else init
    if init == "gptq" and bits != 4:
        raise RecipeError(f"--init gptq starts from GPTQ INT4 weights; use a w4gG format or --init search with {fmt}")
    return bits, group, init


def _gptq_start(base, tokenizer, family, texts: list[str], group: int | None, embedding: bool, ckpt: Path):
    """The packed INT4 start; when resuming, the same modules by rounding alone (the checkpoint holds the
    trained codes, scales and zeros), so GPTQ is not run again."""
    from autolite.cli import console
    from autolite.distill.checkpoint import has_checkpoint
    from autolite.quant.qat_train import gptq_start

    resuming = has_checkpoint(ckpt)
    if resuming:
        console.print(f"resuming from {ckpt}: GPTQ skipped (the checkpoint holds the trained weights)")
    return gptq_start(base, tokenizer, family, texts, group or 64, embedding, method="rtn" if resuming else "gptq")


def _save(model, tokenizer, out: Path, summary, history, force: bool) -> None:
    from autolite.export.hf import write_model_files
    from autolite.io import atomic_dir

    with atomic_dir(out, overwrite=force) as tmp:
        write_model_files(model, tokenizer, tmp)
        (tmp / "qat.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1, default=str),
                                      encoding="utf-8")


def register(app: typer.Typer) -> None:
    app.command()(qat)
