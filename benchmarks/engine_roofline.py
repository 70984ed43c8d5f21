"""Roofline of one model + recipe: achieved GFLOP/s and weight GB/s per linear kind vs measured peaks.

    python benchmarks/engine_roofline.py random:bert-base --recipe int8-dynamic --batch 32 --seq 128
"""
from __future__ import annotations

import argparse
import copy
import logging

import autolite
from autolite.eval.bench import bench_inputs, forward_fn
from autolite.runtime.roofline import measure_peaks, profile, roofline_rows

log = logging.getLogger("roofline")
HEADER = ("layer kind", "ms/forward", "share", "GFLOP/s", "% GEMM peak", "weight GB/s", "% bandwidth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="random:bert-base")
    parser.add_argument("--recipe", default="fp32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, tok, family = autolite.load(args.model)
    model = autolite.compress(copy.deepcopy(model), args.recipe, tokenizer=tok, family=family)
    run = forward_fn(model, family, bench_inputs(tok, family, args.batch, args.seq))
    peaks = measure_peaks()
    result = profile(model, run, runs=args.runs)
    log.info("peaks: FP32 GEMM %.1f GFLOP/s, copy bandwidth %.1f GB/s; forward %.1f ms",
             peaks["gemm_gflops"], peaks["bandwidth_gbs"], result["total_s"] * 1e3)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in roofline_rows(result, peaks)]
    log.info("\n".join(lines))


if __name__ == "__main__":
    main()
