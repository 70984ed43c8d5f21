"""Speed and size of a pruning recipe on BERT-base: the issue's headline numbers in one run.

    python benchmarks/prune_bench.py                                    # bert-prune-h40-f50, batch 32 x 128
    python benchmarks/prune_bench.py --recipe recipes/bert-prune-h40-f50-fast.yaml

Prints latency/speed-up (FP32 eager baseline and candidate interleaved, `autolite bench`'s harness),
encoder parameters before/after and saved safetensors sizes; writes benchmarks/results/prune/bench_<recipe>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import autolite
from autolite.arch import base_model
from autolite.data import load_texts
from autolite.eval.compare import bench_model
from autolite.passes import PassContext

ROOT = Path(__file__).resolve().parent.parent


def encoder_params(model) -> int:
    base = base_model(model)
    encoder = getattr(base, "encoder", None) or getattr(base, "transformer", None) or base
    return sum(p.numel() for p in encoder.parameters())


def saved_mb(model, tok) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        autolite.save_model(model, tok, Path(tmp) / "m")
        return sum(p.stat().st_size for p in (Path(tmp) / "m").glob("*.safetensors")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:bert-base")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "bert-prune-h40-f50.yaml"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    result = bench_model(args.model, args.recipe, batch=args.batch, seq=args.seq, runs=args.runs)
    model, tok, family = autolite.load(args.model)
    calib = load_texts(None, split="calib")
    ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts, labels=calib.labels)
    pruned = autolite.compress(copy.deepcopy(model), [p for p in autolite.load_recipe(args.recipe).passes
                                                      if p.name.startswith("prune")],
                               tokenizer=tok, family=family, ctx=ctx)
    sizes = dict(encoder_params_before=encoder_params(model), encoder_params_after=encoder_params(pruned),
                 saved_mb_before=saved_mb(model, tok), saved_mb_after=saved_mb(pruned, tok))
    result["prune"] = sizes
    name = Path(args.recipe).stem
    out = ROOT / "benchmarks" / "results" / "prune" / f"bench_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(result, indent=2, default=str))
    out.with_suffix(".tmp").replace(out)
    fewer = 1 - sizes["encoder_params_after"] / sizes["encoder_params_before"]
    print(f"{args.model} [{name}] batch {args.batch} x {args.seq}: FP32 eager {result['baseline']['median_ms']:.0f} ms, "
          f"pruned {result['candidate']['median_ms']:.0f} ms -> {result['speedup']:.2f}x; encoder params "
          f"{sizes['encoder_params_before']:,} -> {sizes['encoder_params_after']:,} ({100 * fewer:.1f}% fewer); "
          f"saved {sizes['saved_mb_before']:.0f} -> {sizes['saved_mb_after']:.0f} MB; "
          f"fidelity {json.dumps({k: v for k, v in result['fidelity'].items() if isinstance(v, float)})}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
