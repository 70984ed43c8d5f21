"""Pruning fidelity curves: what heads/FFN pruning costs, with and without recovery.

    python benchmarks/prune_fidelity.py minilm     # cosine vs ratio; magnitude / taylor / head_mask; +- recovery
    python benchmarks/prune_fidelity.py smollm2    # 20% FFN with Wanda (+ recovery): perplexity change, generation

Results go to benchmarks/results/prune/prune_<case>.json and a markdown table on stdout. Timings are not the
point here (see `autolite bench` for speed); numbers depend on the embedded corpus split.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

import autolite
from autolite.data import load_texts
from autolite.passes import PassContext
from autolite.prune import PruneFFN, PruneHeads

RESULTS = Path(__file__).resolve().parent / "results" / "prune"  # not *.json beside the bench results


def _prune(model, tok, family, recipe, calib):
    ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts, labels=calib.labels)
    ctx.teacher = model
    start = time.perf_counter()
    small = autolite.compress(copy.deepcopy(model), recipe, tokenizer=tok, family=family, ctx=ctx)
    return small, time.perf_counter() - start


def minilm(recover_steps: int, ratios: list[tuple[float, float]], methods: list[str], lr: float,
           no_baseline: bool) -> list[dict]:
    model, tok, family = autolite.load("minilm")
    calib, held = load_texts(None, split="calib"), load_texts(None, split="heldout")
    before = sum(p.numel() for p in model.parameters())
    rows = []
    for heads, ffn in ratios:
        for method in methods:
            for steps in ((recover_steps,) if no_baseline else (0, recover_steps)):
                recipe = [PruneHeads(ratio=heads, importance=method),
                          PruneFFN(ratio=ffn, importance=method, recover_steps=steps, recover_lr=lr)]
                small, seconds = _prune(model, tok, family, recipe, calib)
                fid = autolite.evaluate(small, tok, reference=model, data=held, family=family)
                after = sum(p.numel() for p in small.parameters())
                rows.append(dict(heads=heads, ffn=ffn, importance=method, recover_steps=steps,
                                 cosine=fid["cosine"], params_fewer=1 - after / before, seconds=seconds))
                print(f"| {heads:.2f} | {ffn:.2f} | {method} | {steps} | {fid['cosine']:.4f} | "
                      f"{100 * (1 - after / before):.1f}% | {seconds:.0f} |", flush=True)
    return rows


def smollm2(recover_steps: int, ratio: float, lr: float, no_baseline: bool) -> list[dict]:
    model, tok, family = autolite.load("smollm2")
    calib, held = load_texts(None, split="calib"), load_texts(None, split="heldout")
    rows = []
    for steps in ((recover_steps,) if no_baseline else (0, recover_steps)):
        recipe = [PruneFFN(ratio=ratio, importance="wanda", round_to=64, recover_steps=steps, recover_lr=lr)]
        small, seconds = _prune(model, tok, family, recipe, calib)
        fid = autolite.evaluate(small, tok, reference=model, data=held, family=family, max_texts=96)
        prompt = tok("The capital of France is", return_tensors="pt")
        with torch.no_grad():
            ids = small.generate(**prompt, max_new_tokens=16, do_sample=False)
        text = tok.decode(ids[0], skip_special_tokens=True)
        rows.append(dict(ratio=ratio, importance="wanda", recover_steps=steps, perplexity=fid["perplexity"],
                         perplexity_ref=fid["perplexity_ref"], rel_change=fid["perplexity_rel_change"],
                         next_token_agreement=fid.get("next_token_agreement"), seconds=seconds, sample=text))
        print(f"| {ratio:.2f} | wanda | {steps} | {fid['perplexity_ref']:.2f} | {fid['perplexity']:.2f} | "
              f"{100 * fid['perplexity_rel_change']:+.1f}% | {seconds:.0f} | {text!r} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["minilm", "smollm2"])
    parser.add_argument("--recover-steps", type=int, default=100)
    parser.add_argument("--methods", default="magnitude,taylor,head_mask")
    parser.add_argument("--recover-lr", type=float, default=None, help="default: 3e-4 minilm, 2e-5 smollm2")
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without recovery")
    parser.add_argument("--quick", action="store_true", help="only the 30% heads + 40% FFN point")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.case == "minilm":
        ratios = [(0.3, 0.4)] if args.quick else [(0.15, 0.2), (0.3, 0.4), (0.45, 0.6)]
        print("| heads | ffn | importance | recover steps | cosine vs original | params fewer | s |")
        print("|---|---|---|---|---|---|---|")
        rows = minilm(args.recover_steps, ratios, args.methods.split(","), args.recover_lr or 3e-4, args.no_baseline)
    else:
        print("| ffn | importance | recover steps | ppl original | ppl pruned | change | s | greedy sample |")
        print("|---|---|---|---|---|---|---|---|")
        rows = smollm2(args.recover_steps, 0.2, args.recover_lr or 2e-5, args.no_baseline)
    out = RESULTS / f"prune_{args.case}{'_quick' if args.quick else ''}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
