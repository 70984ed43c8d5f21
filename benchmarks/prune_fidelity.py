"""Pruning fidelity curves: what heads/FFN pruning costs, with and without recovery.

    python benchmarks/prune_fidelity.py minilm            # cosine vs ratio; magnitude / taylor / head_mask; +- recovery
    python benchmarks/prune_fidelity.py minilm --quick    # 30% heads + 40% FFN, Taylor, long recovery (the issue's target)
    python benchmarks/prune_fidelity.py smollm2           # 20% FFN with Wanda (+ recovery): perplexity change, generation

Each point is pruned once (scores -> cut -> least-squares refit of the output projections), evaluated, then recovered
(distillation from the unpruned model on seeded, augmented variants of the calibration texts, batch 16) and
evaluated again; ``--eval-every K`` also evaluates every K recovery steps. Results:
benchmarks/results/prune/prune_<case>.json, a markdown table (.md) and, for the curve, a PNG. Fidelity does not
depend on machine load (fixed seeds and step counts); the seconds column does (see `autolite bench` for speed).
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
from autolite.data.distill_corpus import distill_training_texts
from autolite.passes import PassContext
from autolite.prune import PruneFFN, PruneHeads
from autolite.prune.recover import recover, recovery_batches

RESULTS = Path(__file__).resolve().parent / "results" / "prune"  # not *.json beside the bench results
CURVE = [(0.1, 0.1), (0.2, 0.25), (0.3, 0.4), (0.4, 0.5)]
REFIT_TEXTS = 128  # --reconstruct-samples default (a run with another count is saved under its own name)
TABLE: list[str] = []


def emit(line: str) -> None:
    """Print a markdown table line and keep it for the .md file."""
    print(line, flush=True)
    TABLE.append(line)


class CachedReference(torch.nn.Module):
    """The unpruned model, run once per evaluation batch (every point is compared with the same outputs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.cache = model, {}

    def forward(self, **inputs):
        key = (inputs["input_ids"].numpy().tobytes(), tuple(inputs["input_ids"].shape), tuple(sorted(inputs)))
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = self.model(**inputs)
        return self.cache[key]


def _point(model, tok, family, ctx, recipe, args, evaluate) -> list[dict]:
    """Prune with ``recipe``; evaluate; recover ``args.recover_steps`` steps (evaluating every ``args.eval_every``)."""
    start = time.perf_counter()
    small = autolite.compress(copy.deepcopy(model), recipe, tokenizer=tok, family=family, ctx=ctx)
    rows: list[dict] = []

    def on_eval(step: int) -> None:
        rows.append(dict(recover_steps=step, seconds=time.perf_counter() - start, **evaluate(small)))
        print(f"  recovery step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in rows[-1].items()
                                                       if isinstance(v, float)), flush=True)
    on_eval(0)
    if args.recover_steps:
        texts = distill_training_texts(extra=True).texts if args.extra_text else ctx.calib
        batches = recovery_batches(tok, texts, family, torch.device("cpu"), batch_size=args.recover_batch,
                                   augment=args.augment)
        every = args.eval_every or args.recover_steps
        recover(small, model, family, batches, args.recover_steps, lr=args.recover_lr, on_eval=on_eval,
                eval_every=every)
    return rows


def minilm(args, save) -> list[dict]:
    model, tok, family = autolite.load(args.model or "minilm")
    calib, held = load_texts(None, split="calib"), load_texts(None, split="heldout").head(args.max_texts)
    reference = CachedReference(model)
    before = sum(p.numel() for p in model.parameters())
    ratios = [(0.3, 0.4)] if args.quick else [CURVE[i] for i in args.order]
    rows = []
    emit("| heads | ffn | importance | recover steps | cosine vs original | params fewer | s |\n|---|---|---|---|---|---|---|")
    for heads, ffn in ratios:
        for method in args.methods.split(","):
            ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts)
            common = dict(importance=method, calib_samples=args.calib_samples,
                          reconstruct_samples=args.reconstruct_samples, reconstruct=not args.no_reconstruct)
            recipe = [PruneHeads(ratio=heads, **common), PruneFFN(ratio=ffn, **common)]

            def evaluate(small):
                fid = autolite.evaluate(small, tok, reference=reference, data=held, family=family)
                return dict(cosine=fid["cosine"], params_fewer=1 - sum(p.numel() for p in small.parameters()) / before)
            for row in _point(model, tok, family, ctx, recipe, args, evaluate):
                row.update(heads=heads, ffn=ffn, importance=method, reconstruct=not args.no_reconstruct)
                rows.append(row)
                emit(f"| {heads:.2f} | {ffn:.2f} | {method} | {row['recover_steps']} | {row['cosine']:.4f} | "
                     f"{100 * row['params_fewer']:.1f}% | {row['seconds']:.0f} |")
            save(rows)  # after every point: an interrupted run keeps what it measured
    return rows


def smollm2(args) -> list[dict]:
    model, tok, family = autolite.load(args.model or "smollm2")
    calib, held = load_texts(None, split="calib"), load_texts(None, split="heldout").head(args.max_texts)
    ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts)
    recipe = [PruneFFN(ratio=0.2, importance="wanda", round_to=64, calib_samples=args.calib_samples,
                       reconstruct_samples=args.reconstruct_samples, reconstruct=not args.no_reconstruct)]

    def evaluate(small):
        fid = autolite.evaluate(small, tok, reference=model, data=held, family=family)
        return dict(perplexity=fid["perplexity"], perplexity_ref=fid["perplexity_ref"],
                    rel_change=fid["perplexity_rel_change"], next_token_agreement=fid.get("next_token_agreement"),
                    sample=_generate(small, tok))
    rows = _point(model, tok, family, ctx, recipe, args, evaluate)
    emit("| ffn | importance | recover steps | ppl original | ppl pruned | change | next-token agreement | s | "
         "greedy sample |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        row.update(ratio=0.2, importance="wanda", reconstruct=not args.no_reconstruct)
        emit(f"| 0.20 | wanda | {row['recover_steps']} | {row['perplexity_ref']:.2f} | {row['perplexity']:.2f} | "
             f"{100 * row['rel_change']:+.1f}% | {row['next_token_agreement']:.3f} | {row['seconds']:.0f} | "
             f"{row['sample']!r} |")
    return rows


def _generate(model, tok) -> str:
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) \
        if getattr(tok, "chat_template", None) else "The capital of France is"
    encoded = tok(prompt, return_tensors="pt")
    inputs = {k: encoded[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=24, do_sample=False, repetition_penalty=1.1)
    return tok.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def write(case: str, rows: list[dict], args) -> Path:
    """JSON rows and the markdown table (with the settings it was run with), each written atomically."""
    out = Path(args.out) / f"prune_{case}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("case", "out")}
    table = f"Settings: `{json.dumps(settings)}`\n\n" + "\n".join(TABLE) + "\n"
    for path, text in ((out, json.dumps(rows, indent=2)), (out.with_suffix(".md"), table)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return out


def _kept_points(path: Path, rows: list[dict]) -> list[dict]:
    """Rows of the saved curve at (heads, FFN) points this run does not measure."""
    if not path.exists():
        return []
    ours = {(r["heads"], r["ffn"]) for r in rows}
    return [r for r in json.loads(path.read_text()) if (r["heads"], r["ffn"]) not in ours]


def plot(rows: list[dict], path: Path) -> None:
    """Cosine vs fraction of parameters removed, one line per importance, solid with recovery, dashed without."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, method in enumerate(sorted({r["importance"] for r in rows})):
        for steps, style in sorted({(r["recover_steps"], "-" if r["recover_steps"] else "--") for r in rows}):
            points = sorted((r["params_fewer"], r["cosine"]) for r in rows
                            if r["importance"] == method and r["recover_steps"] == steps)
            label = f"{method}, {'recovery ' + str(steps) + ' steps' if steps else 'no recovery'}"
            ax.plot(*zip(*points), style, marker="o", color=f"C{i}", label=label)
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("parameters removed (heads, FFN ratios: 0.1/0.1 ... 0.4/0.5)")
    ax.set_ylabel("embedding cosine vs original (held-out)")
    ax.set_title("all-MiniLM-L6-v2: structured pruning fidelity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["minilm", "smollm2"])
    parser.add_argument("--recover-steps", type=int, default=None, help="default: 32 curve, 800 quick, 32 smollm2")
    parser.add_argument("--recover-lr", type=float, default=None, help="default: 1e-4 minilm, 5e-5 smollm2")
    parser.add_argument("--recover-batch", type=int, default=16, help="texts per recovery step")
    parser.add_argument("--augment", type=float, default=None, help="share of augmented recovery samples "
                                                                    "(default 0.7 minilm, 0 smollm2)")
    parser.add_argument("--eval-every", type=int, default=None, help="also evaluate every K recovery steps "
                                                                     "(default 100 with --quick, else only at the end)")
    parser.add_argument("--model", default=None, help="another model of the same kind (a smoke test: "
                                                          "random:tiny-bert, random:tiny-llama)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results/prune)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--methods", default=None, help="default: taylor with --quick, else "
                                                          "magnitude,taylor,head_mask")
    parser.add_argument("--calib-samples", type=int, default=32, help="texts scored for importance")
    parser.add_argument("--reconstruct-samples", type=int, default=REFIT_TEXTS,
                        help="texts for the least-squares refit")
    parser.add_argument("--no-reconstruct", action="store_true", help="plain cut, no least-squares refit")
    parser.add_argument("--max-texts", type=int, default=None, help="held-out texts evaluated (default all 92)")
    parser.add_argument("--extra-text", action="store_true", help="recover on the calibration split plus the "
                        "bundled distillation corpus (scores and refit still use the calibration split)")
    parser.add_argument("--quick", action="store_true", help="minilm: only the 30%% heads + 40%% FFN point")
    parser.add_argument("--order", type=lambda v: [int(i) for i in v.split(",")], default=[2, 0, 3, 1],
                        help="curve points to run, in this order (indices into 0.1/0.1, 0.2/0.25, 0.3/0.4, 0.4/0.5)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    minilm_case = args.case == "minilm"
    if args.recover_steps is None:
        args.recover_steps = (800 if args.quick else 32) if minilm_case else 32
    if args.eval_every is None:
        args.eval_every = 100 if args.quick else 0
    args.recover_lr = args.recover_lr or (1e-4 if minilm_case else 5e-5)
    args.methods = args.methods or ("taylor" if args.quick else "magnitude,taylor,head_mask")
    if args.threads:
        torch.set_num_threads(args.threads)
    case = args.case + ("_quick" if args.quick else "") + ("_extra" if args.extra_text else "") + \
        (f"_recon{args.reconstruct_samples}" if args.reconstruct_samples != REFIT_TEXTS else "")

    def save(rows: list[dict]) -> None:
        curve = case == "minilm"  # the default curve (not --quick, --extra-text or another refit count)
        if curve:  # a partial --order run keeps the other points of the saved curve
            rows = _kept_points(Path(args.out) / "prune_minilm.json", rows) + rows
        out = write(case, rows, args)
        if curve:
            plot(rows, Path(args.out) / "prune_minilm_curve.png")
        print(f"wrote {out}", flush=True)
    save(minilm(args, save) if minilm_case else smollm2(args))


if __name__ == "__main__":
    main()
