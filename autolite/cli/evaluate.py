"""``autolite eval``: fidelity of a model against a reference on texts."""
from __future__ import annotations

from pathlib import Path

import typer

import autolite
from autolite.cli.common import (DATA_OPT, JSON_OPT, MAX_TEXTS_OPT, MODEL_ARG, console, progress_bar, rows_table,
                                 write_json_atomic)
from autolite.data import load_texts


def eval_command(model: str = MODEL_ARG,
                 reference: str = typer.Option(None, "--reference", help="Reference model; default: the source "
                                               "recorded in a compressed model, else none."),
                 data: Path = DATA_OPT,
                 max_texts: int = MAX_TEXTS_OPT,
                 max_length: int = typer.Option(128, min=2, help="Truncate texts to this many tokens."),
                 json_out: Path = JSON_OPT) -> None:
    """Compare MODEL with a reference: cosine/agreement/accuracy (encoders), perplexity (decoders)."""
    with progress_bar(f"loading {model}"):
        candidate, tokenizer, family = autolite.load(model)
    reference = reference or (getattr(candidate.config, "autolite", None) or {}).get("source")
    ref_model = autolite.load(reference)[0] if reference else None
    texts = load_texts(data, split="heldout", label2id=candidate.config.label2id)
    with progress_bar(f"evaluating on {texts.source}"):
        metrics = autolite.evaluate(candidate, tokenizer, reference=ref_model, data=texts, family=family,
                                    max_texts=max_texts, max_length=max_length)
    metrics.update(model=model, reference=reference)
    rows = [(key, f"{value:.6g}" if isinstance(value, float) else str(value)) for key, value in metrics.items()]
    console.print(rows_table(f"{model} vs {reference or 'no reference'}", ("metric", "value"), rows))
    if reference is None:
        console.print("  note: no reference, so only the model's own metrics; pass --reference MODEL (a compressed "
                      "model records its source and is compared with it by default)")
    if json_out:
        write_json_atomic(json_out, metrics)


def register(app: typer.Typer) -> None:
    app.command("eval", epilog="Example: autolite eval minilm-int8/ --reference minilm "
                "--data reviews.csv")(eval_command)
