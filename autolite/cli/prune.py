"""``autolite prune``: remove heads / FFN neurons, optionally recover, save with a report and importance plot."""
from __future__ import annotations

import copy
from pathlib import Path

import typer

import autolite
from autolite.cli.common import DATA_OPT, FORCE_OPT, MODEL_ARG, console, fraction, positive, progress_bar, rows_table
from autolite.data import load_texts
from autolite.export.hf import write_model_files
from autolite.io import atomic_dir
from autolite.passes import PassContext
from autolite.paths import check_output_dir
from autolite.prune import PruneFFN, PruneHeads
from autolite.prune.plot import plot_importance


def prune(model: str = MODEL_ARG,
          heads: float = typer.Option(0.0, "--heads", callback=fraction,
                                      help="Fraction of attention heads to remove, in [0, 1)."),
          ffn: float = typer.Option(0.0, "--ffn", callback=fraction,
                                    help="Fraction of FFN neurons to remove, in [0, 1)."),
          importance: str = typer.Option("taylor", help="taylor | head_mask | magnitude | l2 | wanda | attention "
                                                        "| ablation (the last two: heads only)."),
          scope: str = typer.Option("per_layer", help="per_layer (same count per layer) or global."),
          round_to: int = typer.Option(1, "--round-to", min=1, help="Kept FFN neurons per layer: a multiple of this."),
          recover_steps: int = typer.Option(0, "--recover-steps", min=0, help="Distillation steps from the original "
                                            "(batch 16 of augmented calibration text; a few hundred for encoders)."),
          recover_lr: float = typer.Option(1e-4, "--recover-lr", callback=positive,
                                           help="Peak learning rate of the recovery."),
          data: Path = DATA_OPT,
          out: Path = typer.Option(..., "--out", "-o", help="Output directory (written atomically)."),
          force: bool = FORCE_OPT) -> None:
    """Prune MODEL's heads and FFN neurons (weights really shrink) and save it with report.md + importance.png."""
    check_output_dir(out, overwrite=force)
    if heads <= 0 and ffn <= 0:
        raise autolite.AutoliteError("nothing to prune: give --heads and/or --ffn (fractions in [0, 1))")
    recipe = []
    if heads > 0:  # recovery (towards the original) runs once, after the last cut
        recipe.append(PruneHeads(ratio=heads, importance=importance, scope=scope,
                                 recover_steps=0 if ffn > 0 else recover_steps, recover_lr=recover_lr))
    if ffn > 0:
        recipe.append(PruneFFN(ratio=ffn, importance=_ffn_importance(importance), scope=scope, round_to=round_to,
                               recover_steps=recover_steps, recover_lr=recover_lr))
    with progress_bar(f"loading {model}"):
        original, tokenizer, family = autolite.load(model)
    calib = load_texts(data, split="calib", label2id=original.config.label2id)
    reference = copy.deepcopy(original)
    ctx = PassContext(family=family, tokenizer=tokenizer, calib=calib.texts, labels=calib.labels)
    ctx.teacher = reference
    small = autolite.compress(original, recipe, tokenizer=tokenizer, family=family, ctx=ctx, inplace=True)
    small.config.autolite["source"] = model
    held = load_texts(data, split="heldout" if data is None else "all", label2id=original.config.label2id)
    with progress_bar("fidelity vs the original"):
        fidelity = autolite.evaluate(small, tokenizer, reference=reference, data=held, family=family, max_texts=64)
    rows = _rows(reference, small, fidelity)
    with atomic_dir(out, overwrite=force) as tmp:
        write_model_files(small, tokenizer, tmp)
        scores = getattr(ctx, "prune_scores", None)
        if scores:
            plot_importance(scores, tmp / "importance.png", title=f"{model}: importance ({importance})")
        (tmp / "report.md").write_text(_report(model, recipe, rows, ctx.notes), encoding="utf-8")
    console.print(rows_table(f"{model} pruned", ("metric", "original", "pruned"), rows))
    for note in ctx.notes:
        console.print(f"  note: {note}", markup=False)
    console.print(f"saved to {out}/ (report.md, importance.png; load with autolite.load('{out}'))", markup=False)


def _ffn_importance(importance: str) -> str:
    """Heads-only criteria fall back to Taylor scores for the FFN."""
    return "taylor" if importance in ("attention", "ablation") else importance


def _rows(reference, small, fidelity: dict) -> list[tuple[str, str, str]]:
    before = sum(p.numel() for p in reference.parameters())
    after = sum(p.numel() for p in small.parameters())
    rows = [("parameters", f"{before:,}", f"{after:,} ({100 * (1 - after / before):.1f}% fewer)")]
    for key in ("cosine", "top1_agreement", "next_token_agreement", "perplexity_rel_change"):
        if fidelity.get(key) is not None:
            rows.append((key, "-", f"{fidelity[key]:.4f}"))
    if fidelity.get("perplexity") is not None:
        rows.append(("perplexity", f"{fidelity.get('perplexity_ref', float('nan')):.3f}",
                     f"{fidelity['perplexity']:.3f}"))
    return rows


def _report(model: str, recipe: list, rows: list, notes: list[str]) -> str:
    lines = [f"# {model}: pruned", "", "Recipe: " + ", ".join(str(c.to_dict()) for c in recipe), "",
             "| metric | original | pruned |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "![importance per layer](importance.png)", "", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite prune minilm --heads 0.3 --ffn 0.4 --recover-steps 200 "
                "--out minilm-pruned/")(prune)
