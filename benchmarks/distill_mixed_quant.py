"""Uniform vs sensitivity-driven mixed weight-only quantization, compared at equal or smaller stored size.

    python benchmarks/distill_mixed_quant.py smollm2 --json smollm2-mixed.json      # ~10 min on 2 cores
    python benchmarks/distill_mixed_quant.py minilm --budgets 4.375,4.5              # ~2 min

Every configuration is a real ``mixed_precision`` pass (the engine's packed INT4 / INT8 modules, the same
quantizer as ``weight-only``); uniform rows map every linear to one format. Bits per weight are what the
files store for the quantized linears: codes + BF16 scales + uint8 zeros (``w4g32`` = 4.75, ``w4g64`` =
4.375, ``w4g128`` = 4.1875, ``w8`` = 8 + 16/in). Sensitivity: ``--estimator output`` (output-space Fisher,
see ``autolite.quant.sensitivity``) on the calibration split; scoring on the held-out split (encoders:
embedding cosine vs FP32; decoders: perplexity).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import autolite
from autolite.eval.bench import model_size
from autolite.data import load_texts
from autolite.quant.mixed import (ENGINE_FORMATS, MixedPrecision, allocate_bits, average_bits, expand_units,
                                  unit_bits_table)
from autolite.quant.sensitivity import analyze


def state_mib(model: torch.nn.Module) -> float:
    """MiB of the saved state dict (unique storages)."""
    return model_size(model)[0]


def score(model, reference, tok, family, heldout) -> dict:
    ref = reference if family.kind == "encoder" else None
    result = autolite.evaluate(model, tok, reference=ref, data=heldout, family=family, max_length=128)
    return {k: result[k] for k in ("cosine", "perplexity") if k in result}


def run_config(name, bits_map, base, tok, family, heldout, bpw, numel) -> dict:
    start = time.perf_counter()
    model = autolite.compress(copy.deepcopy(base), [MixedPrecision(bits=bits_map)], tokenizer=tok, family=family)
    plan = {u: bits_map.get(u, bits_map.get(".*")) for u in numel}
    row = {"config": name, "avg_bits": average_bits(plan, numel, 64, bpw), "file_mib": state_mib(model)}
    row.update(score(model, base, tok, family, heldout))
    row["seconds"] = time.perf_counter() - start
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="minilm")
    parser.add_argument("--estimator", default="output", choices=["output", "fisher", "measured"])
    parser.add_argument("--texts", type=int, default=None, help="held-out texts for scoring (default all)")
    parser.add_argument("--calib-texts", type=int, default=32)
    parser.add_argument("--budgets", default="4.5")
    parser.add_argument("--uniform", default="w8,w4g32,w4g64,w4g128", help="uniform formats to compare")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tok, family = autolite.load(args.model)
    heldout = load_texts(None, split="heldout").head(args.texts)
    calib = load_texts(None, split="calib").texts
    start = time.perf_counter()
    table = analyze(base, tok, family, calib, bits=ENGINE_FORMATS, max_texts=args.calib_texts, max_length=64,
                    gradient=args.estimator == "fisher", measured=args.estimator == "measured",
                    output=args.estimator == "output")
    losses = {"output": table.output, "fisher": table.estimated, "measured": table.measured}[args.estimator]
    bpw = unit_bits_table(base, table.members, list(ENGINE_FORMATS), 64)
    rows = [{"sensitivity_s": time.perf_counter() - start, "estimator": args.estimator}]
    print(json.dumps(rows[0]), flush=True)
    rows.append({"config": "fp32", "avg_bits": 32.0, "file_mib": state_mib(base), **score(base, base, tok, family,
                                                                                          heldout)})
    configs = [(f"uniform {f}", {".*": f}) for f in args.uniform.split(",") if f]
    for budget in (float(b) for b in args.budgets.split(",")):
        plan = allocate_bits(losses, table.numel, budget, 64, bpw=bpw)
        counts = {f: sum(1 for v in plan.values() if v == f) for f in ENGINE_FORMATS}
        configs.append((f"mixed <= {budget} {counts}", expand_units(plan, table.members)))
    for name, bits_map in configs:
        rows.append(run_config(name, bits_map, base, tok, family, heldout, bpw, table.numel))
    metric = "cosine" if family.kind == "encoder" else "perplexity"
    print(f"| config | stored bits/weight (linears) | file MiB | held-out {metric} |")
    print("|---|---|---|---|")
    for row in rows[1:]:
        print(f"| {row['config']} | {row['avg_bits']:.4f} | {row['file_mib']:.1f} | {row[metric]:.5f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
