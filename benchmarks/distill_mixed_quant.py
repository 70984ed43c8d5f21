"""Uniform vs sensitivity-driven mixed weight-only quantization, compared at equal or smaller stored size.

    python benchmarks/distill_mixed_quant.py smollm2 --json smollm2-mixed.json     # ~25 min quiet, 2 cores
    python benchmarks/distill_mixed_quant.py smollm2 --uniform w4g32 --budgets 4.5 --texts 46   # ~8 min
    python benchmarks/distill_mixed_quant.py minilm --method rtn --budgets 4.375,4.5              # ~2 min

``--method gptq`` (default): the uniform rows are the presets (``w4g32`` / ``w4g64`` / ``w4g128``: GPTQ,
asymmetric, INT8 embedding; ``w8``: INT8 per channel, INT8 embedding) and the mixed rows are
``mixed_precision`` passes with ``method: gptq, symmetric: false, embedding: true``: the same engine
modules, GPTQ walk and INT8 embedding, differing only in the per-linear formats. ``--method rtn``: every
row (uniform maps included) is a round-to-nearest ``mixed_precision`` pass with float embeddings.
Bits per weight are what the files store for the transformer linears: codes + BF16 scales + uint8 zeros
(``w4g32`` = 4.75, ``w4g64`` = 4.375, ``w4g128`` = 4.1875 where the width allows, ``w8`` = 8 + 16/in);
file MiB = the whole state dict. Sensitivity (``--estimator output``: output-space Fisher, see
``autolite.quant.sensitivity``; ``gptq``: the same with GPTQ-rounded INT4 probes) on the calibration split, GPTQ calibration on the calibration split,
scoring on the held-out split (encoders: embedding cosine vs FP32; decoders: perplexity).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

import autolite
from autolite.data import load_texts
from autolite.eval.bench import model_size
from autolite.quant.formats import ENGINE_FORMATS
from autolite.quant.mixed import MixedPrecision, allocate_bits, average_bits, expand_units, unit_bits_table
from autolite.quant.sensitivity import (ESTIMATOR_TABLES, Sensitivity, analyze, estimator_losses,
                                       estimator_options)


def state_mib(model: torch.nn.Module) -> float:
    """MiB of the saved state dict (unique storages)."""
    return model_size(model)[0]


def score(model, reference, tok, family, heldout) -> dict:
    ref = reference if family.kind == "encoder" else None
    result = autolite.evaluate(model, tok, reference=ref, data=heldout, family=family, max_length=128)
    return {k: result[k] for k in ("cosine", "perplexity") if k in result}


def sensitivity(base, tok, family, calib, args) -> Sensitivity:
    """The sensitivity table (read from / written to ``--sensitivity-cache`` when given)."""
    cache = Path(args.sensitivity_cache) if args.sensitivity_cache else None
    if cache is not None and cache.exists():
        return Sensitivity.from_dict(json.loads(cache.read_text(encoding="utf-8")))
    table = analyze(base, tok, family, calib, bits=ENGINE_FORMATS, max_texts=args.calib_texts, max_length=64,
                    symmetric=args.method == "rtn", **estimator_options(args.estimator))
    if cache is not None:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_dict()), encoding="utf-8")
        os.replace(tmp, cache)
    return table


def compress_row(name: str, bits_map: dict | None, base, tok, family, calib, method: str):
    """The compressed model of one row: a preset (``bits_map`` None) or a mixed_precision map."""
    if bits_map is None:
        return autolite.compress(copy.deepcopy(base), name, calib=calib, tokenizer=tok, family=family)
    extra = {"method": "gptq", "symmetric": False, "embedding": True} if method == "gptq" else {}
    return autolite.compress(copy.deepcopy(base), [MixedPrecision(bits=bits_map, **extra)], calib=calib,
                             tokenizer=tok, family=family)


def run_row(label, preset, bits_map, base, tok, family, heldout, calib, table, bpw, args) -> dict:
    start = time.perf_counter()
    model = compress_row(preset, bits_map, base, tok, family, calib, args.method)
    seconds = time.perf_counter() - start
    plan = {u: (bits_map or {}).get(u, (bits_map or {}).get(".*", preset)) for u in table.numel}
    row = {"config": label, "avg_bits": average_bits(plan, table.numel, 64, bpw), "file_mib": state_mib(model),
           "quantize_s": seconds, **score(model, base, tok, family, heldout)}
    if args.save_dir:
        autolite.save_model(model, tok, Path(args.save_dir) / label.split()[0].replace("<=", "le"), overwrite=True)
    print(json.dumps(row), flush=True)
    return row


def configs(table: Sensitivity, bpw, args) -> list[tuple[str, str | None, dict | None]]:
    """(label, preset or None, bits map or None) of every row."""
    losses = estimator_losses(table, args.estimator)
    rows = []
    for fmt in (f for f in args.uniform.split(",") if f):
        if args.method == "gptq":
            rows.append((f"{fmt} (preset)", fmt, None))
        else:
            rows.append((f"uniform {fmt}", fmt, {".*": fmt}))
    for budget in (float(b) for b in args.budgets.split(",") if b):
        plan = allocate_bits(losses, table.numel, budget, 64, candidates=args.candidates.split(","), bpw=bpw)
        counts = {f: sum(1 for v in plan.values() if v == f) for f in ENGINE_FORMATS}
        counts = ", ".join(f"{f} x{n}" for f, n in counts.items() if n)
        rows.append((f"mixed<={budget} ({args.method}; {counts})", None, expand_units(plan, table.members)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--method", default="gptq", choices=["gptq", "rtn"])
    parser.add_argument("--estimator", default="output", choices=list(ESTIMATOR_TABLES))
    parser.add_argument("--texts", type=int, default=None, help="held-out texts for scoring (default all)")
    parser.add_argument("--calib-texts", type=int, default=32, help="calibration texts for the sensitivity")
    parser.add_argument("--budgets", default="4.5,4.375", help="mixed rows: stored bits/weight budgets")
    parser.add_argument("--candidates", default=",".join(ENGINE_FORMATS), help="formats the allocator may use")
    parser.add_argument("--uniform", default="w4g32,w4g64,w4g128,w8", help="uniform formats to compare")
    parser.add_argument("--no-fp32", action="store_true", help="skip the FP32 row")
    parser.add_argument("--sensitivity-cache", default=None, help="JSON file to reuse the sensitivity table")
    parser.add_argument("--save-dir", default=None, help="also save every compressed model under this folder")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tok, family = autolite.load(args.model)
    heldout = load_texts(None, split="heldout").head(args.texts)
    calib = load_texts(None, split="calib").texts
    start = time.perf_counter()
    table = sensitivity(base, tok, family, calib, args)
    bpw = unit_bits_table(base, table.members, list(ENGINE_FORMATS), 64)
    rows = [{"sensitivity_s": time.perf_counter() - start, "estimator": args.estimator, "method": args.method}]
    print(json.dumps(rows[0]), flush=True)
    if not args.no_fp32:
        rows.append({"config": "fp32", "avg_bits": 32.0, "file_mib": state_mib(base),
                     **score(base, base, tok, family, heldout)})
    for label, preset, bits_map in configs(table, bpw, args):
        rows.append(run_row(label, preset, bits_map, base, tok, family, heldout, calib, table, bpw, args))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    metric = "cosine" if family.kind == "encoder" else "perplexity"
    print(f"| config | stored bits/weight (linears) | file MiB | held-out {metric} |\n|---|---|---|---|")
    for row in rows[1:]:
        print(f"| {row['config']} | {row['avg_bits']:.4f} | {row['file_mib']:.1f} | {row[metric]:.5f} |")


if __name__ == "__main__":
    main()
