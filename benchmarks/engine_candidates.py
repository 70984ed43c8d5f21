"""Every fast-dense candidate against FP32 eager, timed interleaved in one process, with fidelity and the
dense roofline floor (the most a dense INT8 engine can gain on this CPU).

    python benchmarks/engine_candidates.py random:bert-base --batch 32 --seq 128 --runs 5
    python benchmarks/engine_candidates.py minilm --batch 1 --seq 128 --runs 20 --candidates int8-dynamic
    python benchmarks/engine_candidates.py random:bert-base --batch 32 --floor-only   # roofline floor only

Prints a markdown table (and ``--json F`` writes the numbers). Each candidate is built and warmed right after
the previous one, then all are timed round-robin with the baseline so machine drift hits them alike.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import autolite
from autolite.eval.bench import bench_inputs, forward_fn, interleaved
from autolite.passes import PassContext
from autolite.runtime import fast_dense
from autolite.runtime.roofline import dense_floor, floor_line, measure_peaks

log = logging.getLogger("engine_candidates")
DEFAULT = ["int8-dynamic", "compile", "int8-dynamic+compile", "ort-fp32", "ort-int8"]


def build(model, family, tok, names, inputs):
    """name -> forward callable (warmed once), or name -> reason it was skipped."""
    fns, built, skipped = {}, {}, {}
    ctx = PassContext(family=family, tokenizer=tok, calib=autolite.data.load_texts(None, split="calib").texts)
    for name in names:
        start = time.perf_counter()
        candidate = fast_dense._build(model, fast_dense.candidate_passes(name), ctx)
        if isinstance(candidate, str):
            skipped[name] = candidate
            continue
        fns[name] = forward_fn(candidate, family, inputs)
        fns[name]()  # compile / first call now, before the next candidate resets dynamo
        built[name] = candidate
        log.info("built %s in %.1f s", name, time.perf_counter() - start)
    return fns, built, skipped


def cosine(candidate, model, tok, family, args) -> float:
    """Mean embedding cosine against FP32 on the corpus (the fast-dense fidelity bound)."""
    return autolite.evaluate(candidate, tok, reference=model, family=family, max_texts=args.fidelity_texts,
                             max_length=args.seq)["cosine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="random:bert-base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--candidates", nargs="+", default=DEFAULT)
    parser.add_argument("--floor-only", action="store_true", help="only the FP32 eager time and the roofline floor")
    parser.add_argument("--fidelity-texts", type=int, default=64, help="corpus texts for the cosine")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, family = autolite.load(args.model)
    inputs = bench_inputs(tok, family, args.batch, args.seq)
    names = [] if args.floor_only else args.candidates
    fns, built, skipped = build(model, family, tok, names, inputs)
    samples = interleaved({"fp32": forward_fn(model, family, inputs), **fns}, runs=args.runs, warmup=1)
    median = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    peaks = measure_peaks()
    floor = dense_floor({"rows": {}}, peaks, model, args.batch * args.seq)
    rows = {name: {"median_ms": round(median[name], 1), "speedup": round(median["fp32"] / median[name], 3),
                   "cosine": cosine(cand, model, tok, family, args)} for name, cand in built.items()}
    lines = [f"{args.model} batch {args.batch} x seq {args.seq}, {torch.get_num_threads()} threads, "
             f"FP32 eager {median['fp32']:.1f} ms", "", "| candidate | ms | speedup | cosine |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['median_ms']} | {r['speedup']}x | {r['cosine']:.5f} |" for n, r in rows.items()]
    lines += [f"| {n} | - | skipped: {why} | - |" for n, why in skipped.items()]
    lines += ["", f"peaks: FP32 GEMM {peaks['gemm_gflops']:.0f} GFLOP/s, INT8 GEMM {peaks['int8_gemm_gops']:.0f} "
              f"GOP/s ({peaks['int8_kernels']}), INT8/FP32 {peaks['int8_over_fp32']:.2f}x",
              floor_line(floor, median["fp32"])]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "batch": args.batch, "seq": args.seq,
                                         "fp32_ms": median["fp32"], "candidates": rows, "skipped": skipped,
                                         "peaks": peaks, "floor": floor, "samples_ms": samples}, indent=1))


if __name__ == "__main__":
    main()
