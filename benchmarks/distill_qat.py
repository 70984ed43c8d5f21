"""Short, bounded QAT started from GPTQ vs the GPTQ post-training result (PTQ), same packed format.

    python benchmarks/distill_qat.py smollm2 --format w4g64 --steps 40 --json qat.json     # ~20 min quiet
    python benchmarks/distill_qat.py smollm2 --steps 20 --lr 1e-5,5e-5 --texts 46           # two QAT runs
    python benchmarks/distill_qat.py smollm2 --start out/w4g64 --steps 20   # reuse a saved w4g64 preset model

PTQ: the ``w4gG`` preset (GPTQ, asymmetric, INT8 per-row embedding), calibrated on the calibration split
(or ``--start DIR``: that model saved by ``autolite compress``/``distill_mixed_quant.py --save-dir``).
QAT (``--init gptq``): fake-quant layers initialised from the GPTQ codes (latent weight = dequantized codes,
LSQ scales = the stored scales, zeros fixed), so step 0 is the PTQ model; then logit distillation (KL,
T = 1) from the FP32 model on the calibration split (``--extra-text``: plus the bundled distillation corpus) (AdamW, warm-up then cosine decay, batch ``--batch-size``
texts of up to ``--max-length`` tokens); then converted back to the same packed modules. ``--lr`` takes a
comma list: one QAT run per value, each from the same GPTQ start. Scored on the held-out split
(decoders: perplexity; encoders: embedding cosine vs FP32); sizes are the state dicts.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import autolite
from autolite.data import load_texts
from autolite.data.distill_corpus import distill_training_texts
from autolite.distill import TrainConfig
from autolite.quant.common import transformer_linears
from autolite.quant.formats import parse_format
from autolite.quant.mixed import unit_bits_table
from autolite.quant.qat import convert_qat
from autolite.quant.qat_train import gptq_start, run_qat
from distill_mixed_quant import score, state_mib  # sibling script: same size and fidelity measures


def stored_bits(model, family, fmt: str) -> float:
    """Stored bits per weight of ``fmt`` over the transformer linears (scales and zeros counted)."""
    linears = list(transformer_linears(model, family))
    return unit_bits_table(model, {"linears": linears}, [fmt], 64)["linears"][fmt]


def qat_row(base, tok, family, start, calib, heldout, bits, group, lr, args) -> dict:
    config = TrainConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=lr,
                         max_length=args.max_length, warmup_steps=min(5, args.steps or 5), eval_every=10**9,
                         checkpoint_every=10**9, alpha=1.0, temperature=1.0, augment=0.0)
    began = time.perf_counter()
    result = run_qat(base, tok, family, bits, calib, config, group_size=group, mode="lsq", init=args.init,
                     start=start if args.init == "gptq" else None)
    real = convert_qat(result.student.eval())
    losses = [r["loss"] for r in result.history if "loss" in r]
    row = {"config": f"QAT {args.format} from {args.init} (lr {lr:g}, {result.step} steps)", "steps": result.step,
           "train_min": result.elapsed_s / 60, "wall_min": (time.perf_counter() - began) / 60, "lr": lr,
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
           "file_mib": state_mib(real), **score(real, base, tok, family, heldout)}
    if args.save_dir:
        autolite.save_model(real, tok, Path(args.save_dir) / f"qat-lr{lr:g}", overwrite=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--format", default="w4g64", help="w4g32 | w4g64 | w4g128")
    parser.add_argument("--init", default="gptq", choices=["gptq", "search"])
    parser.add_argument("--start", default=None, help="saved packed model to start from (else GPTQ runs here)")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", default="2e-5", help="comma list: one QAT run per learning rate")
    parser.add_argument("--texts", type=int, default=None, help="held-out texts for scoring (default all)")
    parser.add_argument("--save-dir", default=None, help="also save the QAT models under this folder")
    parser.add_argument("--extra-text", action="store_true",
                        help="QAT also trains on the bundled distillation corpus (GPTQ still calibrates on the "
                             "calibration split only)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.minutes is None and args.steps is None:
        args.steps = 40
    base, tok, family = autolite.load(args.model)
    heldout = load_texts(None, split="heldout").head(args.texts)
    calib = load_texts(None, split="calib")
    bits, group = parse_format(args.format, 64)
    stored = stored_bits(base, family, args.format)
    rows = [{"config": "fp32", "bits": 32.0, "file_mib": state_mib(base), **score(base, base, tok, family, heldout)}]
    print(json.dumps(rows[-1]), flush=True)
    began = time.perf_counter()
    start = (autolite.load(args.start)[0] if args.start else gptq_start(base, tok, family, calib.texts, group))
    rows.append({"config": f"PTQ {args.format} GPTQ (preset)", "bits": stored, "file_mib": state_mib(start),
                 "quantize_min": (time.perf_counter() - began) / 60, **score(start, base, tok, family, heldout)})
    print(json.dumps(rows[-1]), flush=True)
    train = distill_training_texts(extra=True) if args.extra_text else calib
    for lr in (float(v) for v in args.lr.split(",")):
        rows.append({"bits": stored, **qat_row(base, tok, family, start, train, heldout, bits, group, lr, args)})
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    metric = "cosine" if family.kind == "encoder" else "perplexity"
    print(f"| config | stored bits/weight (linears) | file MiB | train min | held-out {metric} |\n|---|---|---|---|---|")
    for row in rows:
        minutes = f"{row['train_min']:.1f}" if "train_min" in row else "-"
        print(f"| {row['config']} | {row['bits']:.4f} | {row['file_mib']:.1f} | {minutes} | {row[metric]:.4f} |")


if __name__ == "__main__":
    main()
