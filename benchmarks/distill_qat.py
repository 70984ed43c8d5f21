"""Short, bounded QAT vs post-training quantization (PTQ) at the same format, both as real packed modules.

    python benchmarks/distill_qat.py smollm2 --format w4g64 --minutes 8 --json qat.json   # ~15 min on 2 cores
    python benchmarks/distill_qat.py minilm --format w4g64 --steps 40

PTQ: the engine's weight-only quantizer (round-to-nearest with a clipping search) on every transformer
linear. QAT: the same starting point (LSQ scales initialised by the same search), trained by distillation
from the FP32 model (logit KL for decoders, embedding/hidden losses for encoders) on the calibration split
of the embedded corpus, then converted to the same packed modules. Scored on the held-out split
(decoders: perplexity; encoders: embedding cosine vs FP32); sizes are the saved state dicts.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import autolite
from autolite.data import load_texts
from autolite.distill import TrainConfig
from autolite.quant.mixed import MixedPrecision, format_bits, parse_format
from autolite.quant.qat import convert_qat, run_qat
from distill_mixed_quant import score, state_mib  # sibling script: same size and fidelity measures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--format", default="w4g64")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--mode", default="lsq", choices=["minmax", "ema", "lsq"])
    parser.add_argument("--texts", type=int, default=None, help="held-out texts for scoring (default all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.minutes is None and args.steps is None:
        args.minutes = 8.0
    base, tok, family = autolite.load(args.model)
    heldout = load_texts(None, split="heldout").head(args.texts)
    bits, group = parse_format(args.format, 64)
    rows = [{"config": "fp32", "bits": 32.0, "file_mib": state_mib(base), **score(base, base, tok, family, heldout)}]
    print(json.dumps(rows[-1]), flush=True)
    ptq = autolite.compress(copy.deepcopy(base), [MixedPrecision(bits={".*": args.format})], tokenizer=tok,
                            family=family)
    stored = format_bits(args.format, 576 if args.model == "smollm2" else 384)
    rows.append({"config": f"PTQ {args.format}", "bits": stored, "file_mib": state_mib(ptq),
                 **score(ptq, base, tok, family, heldout)})
    print(json.dumps(rows[-1]), flush=True)
    config = TrainConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=5, eval_every=10**9, checkpoint_every=10**9, alpha=1.0, temperature=1.0,
                         augment=0.0)
    start = time.perf_counter()
    result = run_qat(base, tok, family, bits, load_texts(None, split="calib"), config, group_size=group,
                     mode=args.mode, init="search")
    real = convert_qat(result.student.eval())
    rows.append({"config": f"QAT {args.format} ({result.step} steps, {result.elapsed_s:.0f} s)", "bits": stored,
                 "file_mib": state_mib(real), "wall_s": time.perf_counter() - start,
                 **score(real, base, tok, family, heldout)})
    print(json.dumps(rows[-1]), flush=True)
    metric = "cosine" if family.kind == "encoder" else "perplexity"
    print(f"| config | stored bits/weight (linears) | file MiB | held-out {metric} |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['bits']:.4f} | {row['file_mib']:.1f} | {row[metric]:.4f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
