"""Generate docs/COMPATIBILITY.md: every family x export format x precision, each export validated.

Each cell exports one tiny random model of the family (``random:tiny-*``: real architecture, hidden 64,
2 layers) and runs the export against the in-memory model on the embedded corpus. A cell shows the
measured difference (relative L2 for lossless paths, cosine for quantized ones), "not supported" with
the exporter's own reason, or the error it raised. Nothing in the table is written by hand.

    python benchmarks/compat_matrix.py [--out docs/COMPATIBILITY.md] [--max-texts 16] [--families tiny-bert,...]
                                       [--columns 'hf fp32,onnx int8,...']
"""
from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import autolite  # noqa: E402
from autolite.errors import AutoliteError  # noqa: E402
from autolite.export import UnsupportedExportError  # noqa: E402

FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-t5", "tiny-gpt2", "tiny-llama", "tiny-qwen2",
            "tiny-mistral"]
LOSSLESS = {"hf fp32", "hf bf16", "hf pruned", "st fp32", "st pruned", "onnx fp32", "onnx fp32 fused",
            "onnx pruned", "mlx fp32", "mlx pruned"}


def _prepare(kind: str) -> Callable[[Any, Any, Any], Any]:
    """A model transform applied before exporting: bf16 cast, or 50% of heads and FFN neurons pruned
    (the real ``precision``, ``prune-heads`` and ``prune-ffn`` passes)."""
    def bf16(model, tok, family):
        from autolite.runtime.precision import Precision

        return autolite.compress(model, [Precision(dtype="bf16", on_unsupported="emulate")], family=family)

    def pruned(model, tok, family):
        from autolite.data import load_texts
        from autolite.prune.ffn import PruneFFN

        from autolite.prune.heads import PruneHeads

        texts = load_texts(None, split="calib").texts[:16]
        recipe = [PruneHeads(ratio=0.5, importance="magnitude", calib_samples=16),
                  PruneFFN(ratio=0.5, importance="magnitude", calib_samples=16)]
        return autolite.compress(model, recipe, calib=texts, tokenizer=tok, family=family)
    return {"bf16": bf16, "pruned": pruned}.get(kind, lambda model, tok, family: model)


# column -> (format, export options, model transform)
COLUMNS: dict[str, tuple[str, dict[str, Any], str]] = {
    "hf fp32": ("hf", {}, ""),
    "hf bf16": ("hf", {}, "bf16"),
    "hf pruned": ("hf", {}, "pruned"),
    "st fp32": ("st", {}, ""),
    "st pruned": ("st", {}, "pruned"),
    "onnx fp32": ("onnx", {}, ""),
    "onnx fp32 fused": ("onnx", {"optimize": True}, ""),
    "onnx int8": ("onnx", {"precision": "int8"}, ""),
    "onnx pruned": ("onnx", {}, "pruned"),
    "mlx fp32": ("mlx", {}, ""),
    "mlx q8 g64": ("mlx", {"bits": 8, "group_size": 64}, ""),
    "mlx q4 g32": ("mlx", {"bits": 4, "group_size": 32}, ""),
    "mlx pruned": ("mlx", {}, "pruned"),
}


def run_cell(preset: str, column: str, max_texts: int) -> dict[str, Any]:
    """Export one family in one format/precision; returns status, measured numbers and notes."""
    fmt, opts, kind = COLUMNS[column]
    model, tok, family = autolite.load(f"random:{preset}")
    try:
        model = _prepare(kind)(copy.deepcopy(model), tok, family)
        with tempfile.TemporaryDirectory() as tmp:
            result = autolite.export(model, tok, Path(tmp) / "out", format=fmt, family=family,
                                     max_texts=max_texts, **opts)
    except UnsupportedExportError as exc:
        return {"status": "unsupported", "reason": str(exc)}
    except AutoliteError as exc:
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:  # an exporter bug: report it in the matrix rather than hide it
        return {"status": "error", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    v = result.validation
    return {"status": "ok", "rel_l2": v.rel_l2, "cosine": v.cosine, "max_abs": v.max_abs, "texts": v.texts,
            "notes": result.notes, **v.extra}


def cell_text(column: str, cell: dict[str, Any]) -> str:
    if cell["status"] == "ok":
        unfused = any("left as exported" in note for note in cell["notes"])
        via_autolite = any("reload with autolite.load" in note for note in cell["notes"])
        if column in LOSSLESS:
            return (f"✓ L2 {cell['rel_l2']:.0e}" + (" (unfused)" if unfused else "")
                    + (" (autolite.load)" if via_autolite else ""))
        return f"✓ cos {cell['cosine']:.6f}, L2 {cell['rel_l2']:.0e}"
    return {"unsupported": "— n/s", "failed": "✗ failed", "error": "✗ error"}[cell["status"]]


def render(results: dict[str, dict[str, dict[str, Any]]], families: list[str], columns: list[str], max_texts: int,
           seconds: float) -> str:
    """The markdown page: table, legend, reasons for every unsupported or failed cell, environment."""
    head = "| format / precision | " + " | ".join(f.removeprefix("tiny-") for f in families) + " |"
    lines = ["# Compatibility matrix", "",
             "Generated by `python benchmarks/compat_matrix.py`; do not edit by hand. Each cell exports the tiny "
             "random model of the family (hidden 64, 2 layers) and validates the export against the in-memory "
             f"model on {max_texts} sentences of the embedded corpus (held-out split).", "",
             head, "|" + "---|" * (len(families) + 1)]
    for column in columns:
        lines.append(f"| {column} | " + " | ".join(cell_text(column, results[f][column]) for f in families) + " |")
    lines += ["", _legend(), "", _columns_doc(), "", _loading_doc(), "", "## Not supported / failed", ""]
    for family in families:
        for column, cell in results[family].items():
            if cell["status"] != "ok":
                lines.append(f"- **{family} / {column}** ({cell['status']}): {cell['reason']}")
    lines += ["", "## Environment", "", _environment(seconds), ""]
    return "\n".join(lines)


def _legend() -> str:
    return "\n".join([
        "Legend:", "",
        "- `✓ L2 x`: validated lossless path; relative L2 error `||export - source|| / ||source||` (must be < 1e-4; "
        "MLX FP32 < 1e-3).",
        "- `✓ cos x, L2 y`: validated quantized path; mean cosine vs the FP32 source, and relative L2 vs the FP32 "
        "source (onnx int8) or vs the torch twin holding the same MLX-quantized weights (mlx q*: proves the MLX "
        "runtime computes exactly the intended quantized model).",
        "- `(unfused)`: ONNX Runtime has no fusion patterns for this family; the graph was left as exported.",
        "- `(autolite.load)`: plain transformers cannot rebuild this model (BERT-family configs derive the head "
        "size from the head count, so fewer heads cannot be written); `autolite.load(DIR)` can, and was validated.",
        "- `— n/s`: not supported (reason below); `✗`: export or validation failed (reason below)."])


def _columns_doc() -> str:
    return "\n".join([
        "Columns: `hf` = transformers directory, reloaded with plain `from_pretrained`; `bf16` = after the "
        "`precision` pass (compared with the in-memory BF16 model); `pruned` = after `prune-heads` + `prune-ffn` "
        "(50% of heads and of FFN neurons, magnitude importance); `st` = sentence-transformers directory (encoders), loaded with "
        "`SentenceTransformer(DIR)`; `onnx` = ONNX Runtime CPU, `fused` = after ONNX Runtime's transformer "
        "optimizer, `int8` = ONNX Runtime dynamic quantization (must keep cosine >= torch dynamic INT8's - "
        "0.001); `mlx` = MLX on CPU (encoders: autolite's MLX BERT; decoders: mlx-lm), `q8 g64` / `q4 g32` = "
        "MLX affine group-wise quantization (bits, group size). Decoders and seq2seq compare logits; encoders "
        "compare hidden states (mean-pooled embeddings for st/mlx)."])


def _loading_doc() -> str:
    return "\n".join([
        "## Exporting and loading", "",
        "`autolite export MODEL --format hf|st|onnx|mlx --out DIR [--precision int8 --optimize] "
        "[--bits 4|8 --group-size 32|64]` (or `autolite.export(model, tok, DIR, format=...)`) validates "
        "every export and prints the difference. Loading the results:", "",
        "- hf: `transformers.AutoModel...from_pretrained(DIR)`; models with autolite's quantized modules: "
        "`autolite.load(DIR)`. Llama-like configs also carry a top-level `rope_theta`.",
        "- st: `sentence_transformers.SentenceTransformer(DIR)`.",
        "- onnx: `onnxruntime.InferenceSession(DIR/model.onnx)`, inputs `input_ids`, `attention_mask` "
        "(+ `decoder_input_ids` for seq2seq), dynamic batch and sequence axes; `onnx_export.json` records "
        "the validation.",
        "- mlx: decoders `mlx_lm.load(DIR)` (`mlx_lm.generate` works); encoders "
        "`autolite.export.mlx_bert.load(DIR)` (mlx-lm has no encoder models)."])


def _environment(seconds: float) -> str:
    import importlib.metadata as md

    versions = []
    for package in ("torch", "transformers", "onnx", "onnxruntime", "sentence-transformers", "mlx", "mlx-lm"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            versions.append(f"{package} not installed")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{stamp}; Python {platform.python_version()} on {platform.machine()} {platform.system()}; "
            f"{', '.join(versions)}; autolite {autolite.__version__}; generated in {seconds:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "COMPATIBILITY.md"))
    parser.add_argument("--max-texts", type=int, default=16)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--columns", default=",".join(COLUMNS), help="comma-separated subset of the columns")
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",")]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        parser.error(f"unknown column(s) {unknown}; known: {', '.join(COLUMNS)}")
    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    families = args.families.split(",")
    start = datetime.datetime.now().timestamp()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for family in families:
        results[family] = {}
        for column in columns:
            results[family][column] = cell = run_cell(family, column, args.max_texts)
            print(f"{family:16s} {column:16s} {cell_text(column, cell)}", file=sys.stderr, flush=True)
    text = render(results, families, columns, args.max_texts, datetime.datetime.now().timestamp() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all(c["status"] in ("ok", "unsupported") for r in results.values() for c in r.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
