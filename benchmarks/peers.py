"""The peers a user could pick instead, and autolite's presets, timed on the same inputs in one process.

    python benchmarks/peers.py                                    # every model and shape (long on 2 cores)
    python benchmarks/peers.py --models random:bert-base minilm --shapes 32x128 1x128
    python benchmarks/peers.py --render                           # only rewrite docs/PEERS.md from the JSON

Per (model, shape), in a process of its own: every contender is built and warmed until its call time settles, then
all are timed round-robin with PyTorch FP32 eager (A B C ... A B C ..., medians after warm-up), so load on the
machine hits them alike. Where the next contender's build would not fit in the memory left (a large model:
RoBERTa-large on 24 GiB), the contenders built so far are timed and freed first, so they run in groups, each
round-robin with its own FP32 eager; every speedup is over the eager of its group. A seq2seq model (T5-small) is
timed as its encoder stack alone (``T5EncoderModel`` with its encoder weights). Each timed call follows a short
pause (``autolite.eval.bench.settle``): the previous engine's idle threads stop spinning. Peers: PyTorch FP32 eager,
``torch.compile`` (Inductor, freezing) in FP32 and BF16 (BF16 only where the CPU runs it natively), ONNX Runtime
FP32 and dynamic INT8 (transformer optimizer fusions; ``quantize_dynamic``), OpenVINO (its default precision, and
INT8 by NNCF post-training quantization on the calibration texts). The ONNX Runtime and OpenVINO peers go through
the same tool calls a user makes (autolite's backend passes make exactly these calls). Ours: the ``default`` and
``int8-dynamic`` presets and ``fast-dense`` (its search measured fresh, at the same shape, its time recorded). Each
row: median ms, speedup over FP32 eager, ratio to the best peer, cosine of mean-pooled embeddings vs FP32 on
held-out corpus texts, memory the model holds. A peer whose package is not installed is skipped with a note (once).
Writes benchmarks/results/peers/<model>-b<B>x<S>.json and docs/PEERS.md (rendered from every JSON there).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

import autolite
from autolite.data import load_texts
from autolite.eval.bench import bench_inputs, forward_fn, interleaved, model_size, release_free_heap
from autolite.passes import PassContext
from autolite.runtime.dense_search import build as build_recipe, warm_up
from autolite.runtime.fast_dense import FastDense
from autolite.runtime.hardware import probe
from autolite.runtime.precision import native_dtypes
import run_all  # benchmarks/run_all.py: the encoder stack of a seq2seq model (this script's folder is on sys.path)
from make_docs import render_peers  # benchmarks/make_docs.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "peers"
DOC = ROOT / "docs" / "PEERS.md"
MODELS = ["random:bert-base", "random:roberta-large", "random:t5-small", "minilm"]
SHAPES = ["32x128", "1x128"]
BUILD_MEMORY_FACTOR = 5  # a contender's build peaks at about this many FP32 copies of the model (export, fusion)
log = logging.getLogger("peers")

# name -> (who makes it, "peer" | "ours", how to build it: passes, or a callable on the FP32 model)
PEERS: dict[str, tuple[str, str, Any]] = {
    "torch.compile FP32 (freezing)": ("PyTorch", "peer", "compile-fp32"),
    "torch.compile BF16 (freezing)": ("PyTorch", "peer", "compile-bf16"),
    "ONNX Runtime FP32 (fused)": ("ONNX Runtime", "peer", [{"pass": "onnxruntime", "precision": "fp32"}]),
    "ONNX Runtime INT8 (fused, dynamic)": ("ONNX Runtime", "peer", [{"pass": "onnxruntime", "precision": "int8"}]),
    "OpenVINO default": ("OpenVINO", "peer", [{"pass": "openvino", "precision": "auto"}]),
    "OpenVINO INT8 (NNCF)": ("OpenVINO", "peer", [{"pass": "openvino", "precision": "int8"}]),
    "autolite default": ("autolite", "ours", "default"),
    "autolite int8-dynamic": ("autolite", "ours", "int8-dynamic"),
    "autolite fast-dense": ("autolite", "ours", "fast-dense"),
}
REQUIRES = {"ONNX Runtime": ("onnxruntime", "onnx"), "OpenVINO": ("openvino",)}


def torch_compiled(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What a PyTorch user does: cast, ``torch.compile`` with Inductor freezing (weights as constants)."""
    model = copy.deepcopy(model).to(dtype).eval()
    torch._dynamo.reset()
    return torch.compile(model, options={"freezing": True})


def load_encoder(spec: str) -> tuple[torch.nn.Module, Any, Any]:
    """The model, tokenizer and family; of a seq2seq model (T5) its encoder stack alone: ``T5EncoderModel``
    holding the model's encoder weights, which autolite sees as an encoder (``autolite.arch.encoder_view``)."""
    model, tok, family = autolite.load(spec)
    if family.kind != "seq2seq":
        return model, tok, family
    encoder, view = run_all.encoder_of(model, family)
    return encoder, tok, view


def missing_package(tool: str) -> str | None:
    import importlib.util

    for name in REQUIRES.get(tool, ()):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def build_contender(name: str, how: Any, model, tok, family, ctx: PassContext, shape) -> tuple[Any, dict]:
    """(model or the reason it was skipped, extra facts) for one contender."""
    if how == "compile-bf16" and "bf16" not in native_dtypes(torch.device("cpu")):
        return "BF16 is not native on this CPU", {}
    if how in ("compile-fp32", "compile-bf16"):
        return torch_compiled(model, torch.bfloat16 if how == "compile-bf16" else torch.float32), {}
    if how == "fast-dense":
        inner = PassContext(family=family, tokenizer=tok, calib=ctx.calib, shape=shape)
        config = FastDense(batch=shape[0], seq=shape[1], use_cache=False)
        built = autolite.compress(model, [config], tokenizer=tok, family=family, ctx=inner)
        note = next((n for n in inner.notes if n.startswith("fast-dense at")), "")
        searched = re.search(r"measured in (\d+) s(?:, (\d+) CPU s)?", note)
        return built, {"note": note, "search_s": int(searched.group(1)) if searched else None,
                       "search_cpu_s": int(searched.group(2)) if searched and searched.group(2) else None}
    passes = how if isinstance(how, list) else [p.to_dict() for p in autolite.load_recipe(how).passes]
    return build_recipe(model, passes, ctx), {}


def cosine(candidate, model, tok, family, seq: int) -> float | None:
    heldout = load_texts(None, split="heldout")
    result = autolite.evaluate(candidate, tok, reference=model, data=heldout, family=family, max_texts=32,
                               max_length=seq)
    return result.get("cosine")


def cpu_times() -> tuple[float, float]:
    """(total jiffies, steal jiffies) from /proc/stat (0, 0 where unreadable)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    return sum(fields), fields[7] if len(fields) > 7 else 0.0


def memory_short(fp32_mb: float, available_mb: float | None = None) -> str | None:
    """Why the next contender cannot be built now: the memory left cannot hold its build (about
    ``BUILD_MEMORY_FACTOR`` FP32 copies of the model)."""
    available_mb = psutil.virtual_memory().available / 2**20 if available_mb is None else available_mb
    needed = BUILD_MEMORY_FACTOR * fp32_mb
    if available_mb >= needed:
        return None
    return f"not built: {available_mb:.0f} MiB of memory left, its build needs about {needed:.0f} MiB"


class Groups:
    """Contenders timed round-robin with FP32 eager, in as few groups as memory allows: a contender whose
    build would not fit next to the ones already built closes the group (it is timed, then freed) and opens
    the next, so a large model's contenders never run the machine out of memory. Each row's speedup is over
    the FP32 eager timed in its own group."""

    def __init__(self, eager: Callable, runs: int) -> None:
        self.eager, self.runs, self.fns, self.count = eager, runs, {}, 0
        self.eager_samples: list[float] = []

    def add(self, name: str, fn: Callable) -> None:
        self.fns[name] = fn

    def close(self, rows: dict[str, dict]) -> None:
        """Time the open group (if any contender is in it), record its rows, free its models."""
        if not self.fns:
            return
        samples = interleaved({"PyTorch FP32 eager": self.eager, **self.fns}, runs=self.runs, warmup=1)
        eager = statistics.median_high(samples["PyTorch FP32 eager"])
        self.eager_samples += samples["PyTorch FP32 eager"]
        for name in self.fns:
            values = samples[name]
            median = statistics.median_high(values)
            rows[name].update(median_ms=round(median, 2), speedup=round(eager / median, 3),
                              samples_ms=[round(v, 2) for v in values], group=self.count,
                              group_eager_ms=round(eager, 2))
        log.info("timed group %d: %s", self.count, ", ".join(self.fns))
        self.fns, self.count = {}, self.count + 1
        gc.collect()
        torch._dynamo.reset()
        release_free_heap()

    def room_for_one_more(self, fp32_mb: float, rows: dict[str, dict]) -> str | None:
        """None when the next build fits; else closes the open group and says why, if it still does not fit."""
        short = memory_short(fp32_mb)
        if short and self.fns:
            self.close(rows)
            short = memory_short(fp32_mb)  # with the open group freed
        return short


def run_one(spec: str, batch: int, seq: int, runs: int, only: list[str] | None, skipped_tools: dict) -> dict:
    """Build every contender for ``spec`` at ``batch x seq`` and time them round-robin with FP32 eager."""
    model, tok, family = load_encoder(spec)
    if family.kind != "encoder":
        return {"model": spec, "batch": batch, "seq": seq, "skipped": f"a {family.kind} model: the engines here "
                "take encoders (and the encoder stack of a seq2seq model)"}
    calib = load_texts(None, split="calib").texts
    ctx = PassContext(family=family, tokenizer=tok, calib=calib, shape=(batch, seq))
    inputs = bench_inputs(tok, family, batch, seq)
    fp32_mb = round(model_size(model)[0], 1)
    rows: dict[str, dict] = {"PyTorch FP32 eager": {"tool": "PyTorch", "side": "peer", "held_mb": fp32_mb,
                                                    "cosine": 1.0}}
    groups = Groups(forward_fn(model, family, inputs), runs)
    total0, steal0 = cpu_times()
    load0 = os.getloadavg()[0]
    for name in sorted(PEERS, key=lambda n: n != "autolite fast-dense"):  # its search first: nothing cached yet
        tool, side, how = PEERS[name]
        if only and name not in only:
            continue
        package = missing_package(tool)
        short = None if package else groups.room_for_one_more(fp32_mb, rows)
        if package or short:
            if package:
                skipped_tools.setdefault(tool, f"{tool} not installed (pip install 'autolite[peers]'): skipped")
            log.warning("%s skipped: %s", name, short or f"{package} not installed")
            rows[name] = {"tool": tool, "side": side, "skipped": short or f"{package} not installed"}
            continue
        start = time.perf_counter()
        built, extra = build_contender(name, how, model, tok, family, ctx, (batch, seq))
        if isinstance(built, str):
            rows[name] = {"tool": tool, "side": side, "skipped": built}
            continue
        groups.add(name, forward_fn(built, family, inputs))
        warm_up(groups.fns[name])  # compile now, before the next contender resets dynamo; until its time settles
        rows[name] = {"tool": tool, "side": side, "build_s": round(time.perf_counter() - start, 1), **extra,
                      "held_mb": round(model_size(built)[0], 1),
                      "cosine": cosine(built, model, tok, family, seq)}
        built = None  # the group holds it (through its forward) until the group is timed
        log.info("built %s in %.1f s", name, rows[name]["build_s"])
    groups.close(rows)
    total1, steal1 = cpu_times()
    eager = statistics.median_high(groups.eager_samples or [float("nan")])
    rows["PyTorch FP32 eager"].update(median_ms=round(eager, 2), speedup=1.0, group=None,
                                      samples_ms=[round(v, 2) for v in groups.eager_samples])
    rows = {name: rows[name] for name in ["PyTorch FP32 eager", *PEERS] if name in rows}  # display order
    label = f"{spec} (encoder stack)" if family.name.endswith("-encoder") else spec
    return {"model": label, "batch": batch, "seq": seq, "runs": runs, "threads": torch.get_num_threads(),
            "groups": groups.count, "rows": rows, "floor": _floor(model, batch * seq, eager),
            "load": {"loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
                     "cpu_steal_share": round((steal1 - steal0) / max(total1 - total0, 1.0), 4)},
            "machine": probe().to_dict(), "command": " ".join(["python", "benchmarks/peers.py", *sys.argv[1:]]),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _floor(model: torch.nn.Module, tokens: int, eager_ms: float) -> dict[str, Any]:
    """The dense floor from the machine's measured GEMM peaks (``autolite bench --roofline``'s)."""
    from autolite.runtime.roofline import dense_floor, measure_peaks

    peaks = measure_peaks()
    return {"peaks": {k: v for k, v in peaks.items() if k != "int8_kernels"},
            **dense_floor({"rows": {}}, peaks, model, tokens), "fp32_eager_ms": round(eager_ms, 2)}


def slug(spec: str, batch: int, seq: int) -> str:
    return f"{spec.split(':')[-1]}-b{batch}x{seq}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="BATCHxSEQ, e.g. 32x128")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds (default: 5 at batch >= 8, else 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch/engine threads (default: torch's)")
    parser.add_argument("--only", nargs="+", default=None, help="contender names (FP32 eager always runs)")
    parser.add_argument("--render", action="store_true", help="only rewrite docs/PEERS.md from the JSON")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON folder (and, with --doc, the doc)")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("autolite", "torch", "transformers", "nncf", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = [(spec, shape) for spec in args.models for shape in args.shapes]
    if not args.render and len(pairs) > 1:  # one process per model and shape: nothing lingers between them
        for spec, shape in pairs:
            cmd = [sys.executable, __file__, "--models", spec, "--shapes", shape,
                   *(["--results", str(args.results)] if args.results != RESULTS else []),
                   *(["--doc", str(args.doc)] if args.doc != DOC else []),
                   *(["--runs", str(args.runs)] if args.runs else []),
                   *(["--threads", str(args.threads)] if args.threads else []),
                   *(["--only", *args.only] if args.only else [])]
            if subprocess.run(cmd, check=False).returncode:
                log.warning("%s at %s failed (see above); going on with the next", spec, shape)
    elif not args.render:
        skipped: dict[str, str] = {}
        spec, shape = pairs[0]
        batch, seq = (int(v) for v in shape.lower().split("x"))
        result = run_one(spec, batch, seq, args.runs or (5 if batch >= 8 else 20), args.only, skipped)
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / f"{slug(spec, batch, seq)}.json"
        out.write_text(json.dumps(result, indent=1))
        log.info("wrote %s", out)
        for note in skipped.values():
            log.warning(note)
    args.doc.write_text(render_peers(sorted(args.results.glob("*.json"))))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
