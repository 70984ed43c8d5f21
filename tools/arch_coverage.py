#!/usr/bin/env python3
"""Which passes run on architectures without a family module: tiny random models of transformers' registry
(built from configs here, no hub), each pass applied and its output checked against the FP32 model.

    .venv/bin/python tools/arch_coverage.py [--out docs/ARCHITECTURES.md] [--json FILE] [--fast] [ARCH ...]
    .venv/bin/python tools/arch_coverage.py --from-json FILE     # re-render the markdown from a saved run

``--fast`` leaves out the Inductor compile (slow on 2 cores). Writes the coverage table as markdown.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

import autolite
from autolite.distill import build_student
from autolite.errors import AutoliteError

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.",
         "A tiny model still has to run every pass.", "Call me Ishmael.", "Numbers like 42 and 7 appear too.",
         "Short.", "The cat sat on the mat near the door of the old house.", "Rain fell all day on the city."]
TINY = dict(vocab_size=30522, max_position_embeddings=256)  # the bundled (BERT) tokenizer's vocabulary
DEC = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, **TINY)
S2S = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
           encoder_ffn_dim=128, decoder_ffn_dim=128, pad_token_id=0, bos_token_id=101, eos_token_id=102,
           decoder_start_token_id=101, **TINY)
# model type -> (transformers class, config overrides): encoders, decoders and seq2seq models beyond the families
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "electra": ("ElectraForMaskedLM", dict(embedding_size=64, **DEC)),
    "albert": ("AlbertForMaskedLM", dict(embedding_size=64, **DEC)),
    "mpnet": ("MPNetForMaskedLM", DEC),
    "deberta-v2": ("DebertaV2ForMaskedLM", DEC),
    "roformer": ("RoFormerForMaskedLM", dict(embedding_size=64, **DEC)),
    "opt": ("OPTForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                                   word_embed_proj_dim=64, pad_token_id=0, **TINY)),
    "gpt_neox": ("GPTNeoXForCausalLM", DEC),
    "bloom": ("BloomForCausalLM", dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=30522)),
    "falcon": ("FalconForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         vocab_size=30522)),
    "phi": ("PhiForCausalLM", DEC),
    "gemma": ("GemmaForCausalLM", dict(num_key_value_heads=2, head_dim=16, **DEC)),
    "stablelm": ("StableLmForCausalLM", dict(num_key_value_heads=4, **DEC)),
    "bart": ("BartForConditionalGeneration", S2S),
    "pegasus": ("PegasusForConditionalGeneration", S2S),
}
PASSES: dict[str, list[dict[str, Any]]] = {
    "precision bf16": [{"pass": "precision", "dtype": "bf16"}],
    "compile": [{"pass": "compile", "backend": "inductor", "freeze": True}],
    "int8-dynamic": [{"pass": "int8-dynamic", "kernel": "int_mm", "fallback": False, "rows": 8}],
    "int8-static": [{"pass": "int8-static", "observer": "minmax", "fallback": False, "max_texts": 8}],
    "weight-only w8": [{"pass": "weight-only", "bits": 8, "group_size": None}],
    "weight-only w4g32": [{"pass": "weight-only", "bits": 4, "group_size": 32}],
    "onnxruntime": [{"pass": "onnxruntime", "precision": "fp32"}],
    "prune-heads": [{"pass": "prune-heads", "ratio": 0.5}],
}
log = logging.getLogger("arch_coverage")


def tiny_model(model_type: str) -> torch.nn.Module:
    """A random 2-layer model of ``model_type`` (hidden 64) built from its config (no download)."""
    class_name, overrides = ARCHS[model_type]
    config = transformers.AutoConfig.for_model(model_type, **overrides)
    torch.manual_seed(0)
    return getattr(transformers, class_name)(config).eval()


def _fidelity(model, reference, tok) -> str:
    result = autolite.evaluate(model, tok, reference=reference, data=TEXTS)
    for key, label in (("cosine", "cosine"), ("next_token_agreement", "agreement"), ("ppl_change", "ppl change")):
        if result.get(key) is not None:
            return f"{label} {result[key]:.3f}"
    return "ran"


def _outcome(run: Callable[[], str]) -> str:
    """``ok (...)``, ``refused: <the one-line error>`` or ``failed: <exception>``."""
    try:
        return f"ok ({run()})"
    except AutoliteError as exc:
        lines = str(exc).splitlines()
        return "refused: " + (lines[0] if len(lines) == 1 else f"{lines[0]} (+{len(lines) - 1} lines)")
    except Exception as exc:  # the table records a bug instead of stopping at it
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def _hf_roundtrip(model, tok, recipe: list[dict[str, Any]]) -> str:
    small = autolite.compress(model, copy.deepcopy(recipe), tokenizer=tok)
    with tempfile.TemporaryDirectory() as tmp:
        autolite.save_model(small, tok, Path(tmp) / "m")
        try:
            loaded, _, family = autolite.load(Path(tmp) / "m")
        except AutoliteError as exc:  # the table names the saved directory, not this machine's temp path
            raise type(exc)(str(exc).replace(str(Path(tmp) / "m"), "<saved dir>")) from exc
    return f"reloads as {type(loaded).__name__} ({family.kind}); " + _fidelity(loaded, small, tok)


def coverage(model_type: str, passes: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Pass name -> outcome on a tiny ``model_type`` model."""
    model, tok = tiny_model(model_type), autolite.loading.bundled_tokenizer()
    family = autolite.arch.family_of(model)
    row = {"kind": family.kind}
    for name, recipe in passes.items():
        row[name] = _outcome(lambda: _fidelity(autolite.compress(model, copy.deepcopy(recipe), calib=TEXTS,
                                                                  tokenizer=tok), model, tok))
    row["hf export"] = _outcome(lambda: _hf_roundtrip(model, tok, []))
    row["hf export w8"] = _outcome(lambda: _hf_roundtrip(model, tok, PASSES["weight-only w8"]))
    row["hf export w4"] = _outcome(lambda: _hf_roundtrip(model, tok, PASSES["weight-only w4g32"]))
    row["distill student"] = _outcome(lambda: str(build_student(model, family, 1).config.model_type))
    return row


def markdown(table: dict[str, dict[str, str]], seconds: float) -> str:
    columns = list(next(iter(table.values())))
    lines = ["# Architecture coverage", "",
             "Generated by `tools/arch_coverage.py` (do not edit by hand): tiny random models (2 layers, hidden 64) "
             "of model types without a family module in `autolite/arch`, built from transformers' configs. "
             "`ok` = the pass ran and its output was compared with the FP32 model (metric shown); `refused` = the "
             f"one-line error a user gets. torch {torch.__version__}, transformers {transformers.__version__}; "
             f"{seconds:.0f} s.", "",
             "| model type | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for arch, row in table.items():
        lines.append(f"| {arch} | " + " | ".join(_cell(row[c]) for c in columns) + " |")
    refusal = next((v for row in table.values() for v in row.values() if NO_LAYER_MAP in v), None)
    if refusal:
        lines += ["", f"`refused: no layer map` reads, in full: `{refusal[len('refused: '):]}`"]
    return "\n".join(lines) + "\n"


NO_LAYER_MAP = "is not supported; supported families"


def _cell(outcome: str) -> str:
    if NO_LAYER_MAP in outcome:
        return "refused: no layer map"
    return re.sub(r"/tmp/\S+?/m:", "<saved dir>:", outcome).replace("|", "/")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=list(ARCHS))
    parser.add_argument("--out", default="docs/ARCHITECTURES.md")
    parser.add_argument("--json", default=None)
    parser.add_argument("--fast", action="store_true", help="leave out the Inductor compile")
    parser.add_argument("--from-json", default=None, help="re-render the markdown of a run saved with --json")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        Path(args.out).write_text(markdown(saved["table"], saved["seconds"]), encoding="utf-8")
        return 0
    logging.basicConfig(level=logging.WARNING)
    passes = {k: v for k, v in PASSES.items() if not (args.fast and k == "compile")}
    start, table = time.perf_counter(), {}
    for arch in args.archs:
        table[arch] = coverage(arch, passes)
        print(arch, json.dumps(table[arch]), file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    Path(args.out).write_text(markdown(table, seconds), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "table": table}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
