"""Uniform vs sensitivity-driven mixed weight-only quantization at equal or smaller size.

    python benchmarks/distill_mixed_quant.py minilm --estimator measured --json out.json
    python benchmarks/distill_mixed_quant.py smollm2 --estimator fisher --texts 32

Quantization is simulated (fake-quant weights, group-wise symmetric, FP16 scales counted in bits per
weight). Encoders report held-out embedding cosine vs FP32, decoders held-out perplexity.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import autolite
from autolite.data import load_texts
from autolite.quant.mixed import MixedPrecision, allocate_bits, average_bits, bits_per_weight, expand_units
from autolite.quant.qat import transformer_linears
from autolite.quant.sensitivity import analyze


def score(model, reference, tok, family, heldout) -> dict:
    result = autolite.evaluate(model, tok, reference=reference, data=heldout, family=family, max_length=64)
    keys = ("cosine", "perplexity", "perplexity_ref", "next_token_agreement")
    return {k: result[k] for k in keys if k in result}


def run_config(name, bits_map, group, base, tok, family, heldout, numel_total, rest_mb) -> dict:
    model = autolite.compress(copy.deepcopy(base), [MixedPrecision(bits=bits_map, group_size=group)],
                              tokenizer=tok, family=family)
    linears = transformer_linears(base, family)
    plan = {n: next(b for p, b in bits_map.items() if p == n or p == ".*") for n in linears}
    numel = {n: m.weight.numel() for n, m in linears.items()}
    avg = average_bits(plan, numel, group)
    row = {"config": name, "avg_bits": avg, "linear_mb": avg * numel_total / 8 / 2**20, "rest_fp16_mb": rest_mb}
    row.update(score(model, base, tok, family, heldout))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="minilm")
    parser.add_argument("--estimator", default="measured", choices=["measured", "fisher"])
    parser.add_argument("--texts", type=int, default=64, help="held-out texts for scoring")
    parser.add_argument("--calib-texts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=64, help="group of the mixed allocations")
    parser.add_argument("--budgets", default="4.5,4.25,3.5")
    parser.add_argument("--skip-uniform", action="store_true", help="only the mixed allocations")
    parser.add_argument("--granularity", default="linear", choices=["linear", "layer"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tok, family = autolite.load(args.model)
    heldout = load_texts(None, split="heldout").head(args.texts)
    calib = load_texts(None, split="calib").texts
    linears = transformer_linears(base, family)
    numel = {n: m.weight.numel() for n, m in linears.items()}
    total = sum(numel.values())
    rest_mb = (sum(p.numel() for p in base.parameters()) - total) * 2 / 2**20
    start = time.perf_counter()
    group = args.group_size
    table = analyze(base, tok, family, calib, bits=(8, 6, 4, 3, 2), group_size=group, max_texts=args.calib_texts,
                    max_length=64, granularity=args.granularity, gradient=args.estimator == "fisher",
                    measured=args.estimator == "measured")
    losses = table.measured if args.estimator == "measured" else table.estimated
    rows = [{"sensitivity_s": time.perf_counter() - start, "estimator": args.estimator}]
    configs = [] if args.skip_uniform else [("uniform w8g64", {".*": 8}, 64), ("uniform w4g32", {".*": 4}, 32),
                                            ("uniform w4g64", {".*": 4}, 64), ("uniform w3g64", {".*": 3}, 64)]
    for budget in (float(b) for b in args.budgets.split(",")):
        for label, cands in (("2..8", None), ("4,8", [4, 8])):
            try:
                plan = allocate_bits(losses, table.numel, budget, group, cands)
            except autolite.AutoliteError as exc:
                print(f"skip mixed {{{label}}} g{group} <= {budget}: {exc}")
                continue
            configs.append((f"mixed {{{label}}} g{group} <= {budget}", expand_units(plan, table.members), group))
    for name, bits_map, group in configs:
        rows.append(run_config(name, bits_map, group, base, tok, family, heldout, total, rest_mb))
    print("| config | avg bits/weight | quantized linears MiB | metric |")
    print("|---|---|---|---|")
    metric = "cosine" if family.kind == "encoder" else "perplexity"
    for row in rows[1:]:
        print(f"| {row['config']} | {row['avg_bits']:.3f} | {row['linear_mb']:.1f} | {row[metric]:.5f} |")
    print(f"(FP16 linears would be {bits_per_weight(16, 64) * total / 8 / 2**20:.1f} MiB)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
