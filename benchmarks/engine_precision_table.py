"""Generate docs/PRECISION.md: speed, size and fidelity per precision, measured on this machine.

Encoder rows: ``autolite bench``'s harness (FP32 eager baseline and candidate interleaved in one process)
on each encoder at ``--batch x --seq``. Decoder rows (SmolLM2-135M): perplexity vs FP32 on the embedded
held-out corpus, saved safetensors size, and, each in a fresh subprocess that loads the saved model,
greedy decode tokens/s at batch 1 and the peak RSS of the decode (peak reset after loading).

    python benchmarks/engine_precision_table.py                          # everything (~35 min on 2 cores)
    python benchmarks/engine_precision_table.py --quick                  # tiny models: checks the script (~1 min)
    python benchmarks/engine_precision_table.py --decoder-only --skip-speed   # smollm2 perplexity + sizes
    python benchmarks/engine_precision_table.py --decoder-only --skip-speed --keep out/rows   # ... kept, then:
    python benchmarks/engine_precision_table.py --decoder-only --decode-from out/rows        # decode speed only
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

import autolite
from autolite.config import Recipe
from autolite.data import load_texts
from autolite.passes import PassContext

log = logging.getLogger("precision_table")
# label -> preset name, or a pass list; "bf16 emulated" casts to BF16 even where the CPU lacks native
# BF16 (slow there, but its cosine is the real BF16 numerics, which the "bf16" preset's fallback hides).
ENCODER_RECIPES: dict[str, Any] = {"bf16": "bf16", "bf16 emulated": [{"pass": "precision", "dtype": "bf16",
                                                                   "on_unsupported": "emulate"}],
                                   "int8-dynamic": "int8-dynamic", "int8-static": "int8-static",
                                   "fast-dense": "fast-dense"}


def _wo(bits: int, group: int | None, method: str = "rtn", embedding: bool = True) -> list[dict]:
    return [{"pass": "weight-only", "bits": bits, "group_size": group, "symmetric": bits == 8,
             "method": method, "embedding": embedding}]


# label -> recipe (preset name or pass list); the presets w8/w4g* are the rows marked "(preset)".
DECODER_ROWS: dict[str, Any] = {
    "bf16": "bf16",
    "int8-dynamic": "int8-dynamic",
    "w8 (preset)": "w8",
    "w8 float-embedding": _wo(8, None, embedding=False),
    "w4g128 rtn float-embedding": _wo(4, 128, embedding=False),
    "w4g128 rtn": _wo(4, 128),
    "w4g128 gptq (preset)": "w4g128",
    "w4g64 rtn": _wo(4, 64),
    "w4g64 gptq (preset)": "w4g64",
    "w4g32 rtn": _wo(4, 32),
    "w4g32 gptq (preset)": "w4g32",
}


def encoder_rows(model: str, args: argparse.Namespace) -> list[list[str]]:
    from autolite.eval.bench import model_size
    from autolite.eval.compare import bench_model
    from autolite.runtime.fast_dense import FastDense

    rows = []
    for label, recipe in ENCODER_RECIPES.items():
        if not isinstance(recipe, str):
            recipe = Recipe.from_dict({"passes": copy.deepcopy(recipe)}, name=label)
        if args.skip_speed:
            if label == "fast-dense":
                continue  # its choice is a speed measurement
            base, tok, family = autolite.load(model)
            calib = load_texts(None, split="calib")
            ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts, labels=calib.labels)
            cand = autolite.compress(copy.deepcopy(base), recipe, tokenizer=tok, family=family, ctx=ctx)
            fid = autolite.evaluate(cand, tok, reference=base, max_texts=64, max_length=args.seq)
            rows.append([label, "-", "-", "-", f"{model_size(cand)[0]:.0f}", f"{fid['cosine']:.5f}",
                         "; ".join(ctx.notes)[:160]])
        else:
            spec = [FastDense(batch=args.batch, seq=args.seq)] if label == "fast-dense" else recipe
            result = bench_model(model, spec, batch=args.batch, seq=args.seq, runs=args.runs)
            fid = result["fidelity"]
            rows.append([label, f"{result['baseline']['median_ms']:.0f}", f"{result['candidate']['median_ms']:.0f}",
                         f"{result['speedup']:.2f}x", f"{result['candidate']['size_mb']:.0f}",
                         f"{fid.get('cosine', float('nan')):.5f}", "; ".join(result["notes"])[:160]])
        log.info("encoder %s %s: %s", model, label, rows[-1])
    return rows


def _saved_mib(directory: pathlib.Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def decode_worker(directory: str, new_tokens: int) -> dict[str, float]:
    """In a fresh process: load the saved model, decode greedily at batch 1, measure tokens/s and peak RSS."""
    import gc

    import psutil

    model, tok, _ = autolite.load(directory)
    ids = tok("Once upon a time, in a small village by the sea,", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up (kernel weight layouts are built here)
        gc.collect()
        loaded = psutil.Process().memory_info().rss
        reset = _reset_peak_rss()
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        elapsed = time.perf_counter() - start
    peak = _peak_rss() if reset else None
    return {"tokens_per_s": (out.shape[1] - ids.shape[1]) / elapsed, "loaded_mib": loaded / 2**20,
            "peak_mib": (peak or psutil.Process().memory_info().rss) / 2**20, "peak_is_hwm": bool(reset)}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> float | None:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return None


def _decode_in_subprocess(directory: pathlib.Path, new_tokens: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--decode-worker", str(directory), "--new-tokens", str(new_tokens)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"decode worker failed on {directory}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decoder_rows(spec: str, args: argparse.Namespace) -> list[list[str]]:
    if args.decode_from:
        return decode_saved_rows(pathlib.Path(args.decode_from), args)
    if args.keep:
        return _decoder_rows(spec, pathlib.Path(args.keep), args)
    with tempfile.TemporaryDirectory(prefix="precision_") as tmp:
        return _decoder_rows(spec, pathlib.Path(tmp), args)


def _decoder_rows(spec: str, tmp: pathlib.Path, args: argparse.Namespace) -> list[list[str]]:
    model, tok, family = autolite.load(spec)
    calib = load_texts(None, split="calib").texts
    autolite.save_model(model, tok, tmp / "fp32", overwrite=True)
    base_mib = _saved_mib(tmp / "fp32")
    saved = [{"label": "fp32", "dir": "fp32", "fid": None, "seconds": 0.0}]
    rows = [_decoder_row("fp32", tmp / "fp32", base_mib, None, 0.0, args)]
    wanted = [w.strip() for w in args.rows.split(",")] if args.rows else None
    for label, recipe in DECODER_ROWS.items():
        if wanted is not None and label not in wanted:
            continue
        start = time.perf_counter()
        if not isinstance(recipe, str):
            recipe = Recipe.from_dict({"passes": recipe}, name=label)  # fresh configs: apply records into them
        cand = autolite.compress(copy.deepcopy(model), recipe, calib=calib, tokenizer=tok, family=family)
        seconds = time.perf_counter() - start
        fid = autolite.evaluate(cand, tok, reference=model, max_texts=args.max_texts)
        name = f"row{len(rows)}"
        autolite.save_model(cand, tok, tmp / name, overwrite=True)
        del cand
        saved.append({"label": label, "dir": name, "fid": fid, "seconds": seconds})
        (tmp / "rows.json").write_text(json.dumps(saved, indent=1))  # --decode-from reads it
        rows.append(_decoder_row(label, tmp / name, base_mib, fid, seconds, args))
        log.info("decoder %s: %s", label, rows[-1])
    return rows


def decode_saved_rows(directory: pathlib.Path, args: argparse.Namespace) -> list[list[str]]:
    """Decode speed of the rows a ``--keep DIR`` run saved (fidelity and sizes read back from it)."""
    if not (directory / "rows.json").is_file():
        raise SystemExit(f"{directory} has no rows.json: run with --keep {directory} first")
    saved = json.loads((directory / "rows.json").read_text())
    base_mib = _saved_mib(directory / "fp32")
    rows = []
    for row in saved:
        rows.append(_decoder_row(row["label"], directory / row["dir"], base_mib, row["fid"], row["seconds"], args))
        log.info("decoder %s: %s", row["label"], rows[-1])
    return rows


def _decoder_row(label: str, directory: pathlib.Path, base_mib: float, fid: dict | None, seconds: float,
                 args: argparse.Namespace) -> list[str]:
    mib = _saved_mib(directory)
    ppl = "-" if fid is None else f"{fid['perplexity']:.3f}"
    change = "0.00%" if fid is None else f"{100 * fid['perplexity_rel_change']:+.2f}%"
    speed = ["-", "-", "-"]
    if not args.skip_speed:
        run = _decode_in_subprocess(directory, args.new_tokens, torch.get_num_threads())
        speed = [f"{run['tokens_per_s']:.1f}", f"{run['loaded_mib']:.0f}", f"{run['peak_mib']:.0f}"]
    return [label, f"{mib:.1f}", f"{base_mib / mib:.2f}x", ppl, change, f"{seconds:.0f}", *speed]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


DECODER_NOTES = """\
- `saved MiB`: safetensors files written by `autolite.save_model`; `smaller` = FP32 file / recipe file.
- `perplexity` on the embedded held-out corpus (calibration uses the disjoint calib split); `vs FP32` its
  relative change. `quantize s`: time to apply the recipe (GPTQ calibrates block by block).
- INT4 rows store two 4-bit codes per byte with a BF16 scale and a uint8 zero per group
  (`aten._weight_int4pack_mm_for_cpu` for <= 8 tokens per call, dequantized GEMM above); INT8 rows use
  `aten._weight_int8pack_mm`. Rows without "float-embedding" also store the token embedding as INT8 per
  row; the tied `lm_head` reads the same INT8 copy and runs `aten._weight_int8pack_mm` at decode.
- `gptq`: `method: gptq` (Hessian from calibration activations, column-wise error compensation,
  act-order with static groups), calibrated on 8192 tokens of the calib split. `rtn`: round-to-nearest
  with a per-group range search.
- Decode: each row in a fresh process that loads the saved model, batch 1, greedy. `RSS loaded`: resident
  memory after loading and a warm-up; `peak RSS decode`: the process's peak resident memory during the
  timed decode (peak counter reset after the warm-up, Linux `clear_refs`), i.e. what decoding needs
  including the Python/torch runtime."""


def render(args: argparse.Namespace, enc: dict[str, list[list[str]]], dec: list[list[str]]) -> str:
    from autolite.runtime.hardware import probe

    info = probe()
    parts = ["# Precision table", "",
             f"Generated by `python benchmarks/engine_precision_table.py{' ' + ' '.join(args.argv) if args.argv else ''}`"
             f" on {datetime.date.today()} ({info.cpu_model}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}). Speed ratios are measured in one process against FP32 eager; rerun on your "
             "machine. `-`: not measured in this run (`--skip-speed`).", ""]
    for model, rows in enc.items():
        parts += [f"## Encoder `{model}`, batch {args.batch} x seq {args.seq}", "",
                  table(["recipe", "FP32 ms", "recipe ms", "speed-up", "weights MiB", "cosine vs FP32", "notes"],
                        rows), ""]
    if dec:
        parts += [f"## Decoder `{args.decoder}`: perplexity, size, decode at batch 1", "",
                  table(["recipe", "saved MiB", "smaller", "perplexity", "vs FP32", "quantize s", "decode tok/s",
                         "RSS loaded MiB", "peak RSS decode MiB"], dec), "", DECODER_NOTES, ""]
    return "\n".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="minilm,random:bert-base", help="comma-separated encoder specs")
    parser.add_argument("--decoder", default="smollm2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-texts", type=int, default=None, help="held-out texts for perplexity (all)")
    parser.add_argument("--rows", default=None, help="comma-separated decoder row labels to run (all)")
    parser.add_argument("--out", default="docs/PRECISION.md")
    parser.add_argument("--quick", action="store_true", help="tiny models, few runs: checks the script only")
    parser.add_argument("--decoder-only", action="store_true", help="skip the encoder rows")
    parser.add_argument("--encoder-only", action="store_true", help="skip the decoder rows")
    parser.add_argument("--skip-speed", action="store_true", help="fidelity and size only (no timing)")
    parser.add_argument("--keep", default=None, help="save the decoder rows' models (and rows.json) in this dir")
    parser.add_argument("--decode-from", default=None,
                        help="measure decode speed of the rows a --keep run saved (no quantization)")
    parser.add_argument("--decode-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.encoders, args.decoder, args.batch, args.seq, args.runs, args.new_tokens, args.max_texts = (
            "random:tiny-bert", "random:tiny-llama", 2, 32, 3, 4, 16)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.decode_worker:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(decode_worker(args.decode_worker, args.new_tokens)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    enc = {} if args.decoder_only else {m: encoder_rows(m, args) for m in args.encoders.split(",") if m}
    dec = [] if args.encoder_only else decoder_rows(args.decoder, args)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(args, enc, dec))
    os.replace(tmp, out)  # atomic: readers never see a half-written table
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
