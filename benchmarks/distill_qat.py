"""Short, bounded QAT of a uniform low-bit model, distilled from its FP32 self, then converted to real modules.

    python benchmarks/distill_qat.py minilm --bits 4 --steps 40
    python benchmarks/distill_qat.py smollm2 --bits 4 --steps 20 --batch-size 4

Prints held-out fidelity (encoders: embedding cosine vs FP32; decoders: perplexity) of post-training
fake-quantization (PTQ, the QAT starting point), after QAT, and after converting the QAT model to the
engine's packed weight-only modules (which must match the fake-quant model).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import autolite
from autolite.data import load_texts
from autolite.distill import TrainConfig
from autolite.eval.bench import model_size
from autolite.quant.qat import convert_qat, prepare_qat, run_qat


def score(model, reference, tok, family, heldout) -> dict:
    result = autolite.evaluate(model, tok, reference=reference, data=heldout, family=family, max_length=64)
    return {k: result[k] for k in ("cosine", "perplexity", "perplexity_ref") if k in result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="minilm")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--mode", default="minmax", choices=["minmax", "ema", "lsq"])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    base, tok, family = autolite.load(args.model)
    heldout = load_texts(None, split="heldout").head(args.texts)
    rows = {}
    ptq = prepare_qat(copy.deepcopy(base), family, args.bits, args.group_size, mode=args.mode).eval()
    rows["ptq"] = score(ptq, base, tok, family, heldout)
    print("PTQ", json.dumps(rows["ptq"]), flush=True)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=64, lr=args.lr, warmup_steps=2,
                         eval_every=max(args.steps // 4, 1), eval_texts=32)
    start = time.perf_counter()
    result = run_qat(base, tok, family, args.bits, load_texts(None, split="calib"), config, heldout=heldout,
                     group_size=args.group_size, mode=args.mode)
    rows["train_s"] = time.perf_counter() - start
    rows["curve"] = [(r["step"], r["eval"]) for r in result.history if "eval" in r]
    qat = result.student.eval()
    rows["qat"] = score(qat, base, tok, family, heldout)
    print("QAT", json.dumps(rows["qat"]), flush=True)
    ids = tok(heldout.texts[:4], return_tensors="pt", padding=True, truncation=True, max_length=64)
    inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    with torch.no_grad():
        fake_out = qat(**inputs)[0]
        real = convert_qat(qat)
        real_out = real(**inputs)[0]
    rows["convert_max_abs_diff"] = float((fake_out - real_out).abs().max())
    rows["size_mb"] = {"fp32": model_size(base)[0], "converted": model_size(real)[0]}
    rows["converted"] = score(real, base, tok, family, heldout)
    print(json.dumps(rows, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
