"""Baseline vs candidate in one process: interleaved timing, memory, size, fidelity."""
from __future__ import annotations

import copy
import datetime
import logging
from typing import Any, Callable

import torch

import autolite
from autolite.arch import ArchSpec
from autolite.data import load_texts
from autolite.errors import BackendUnavailableError
from autolite.eval.bench import (Timing, bench_inputs, first_call_seconds, forward_fn, interleaved, model_size,
                                 peak_memory_mb)
from autolite.eval.fidelity import evaluate
from autolite.eval.forward import model_device
from autolite.passes import PassContext, compress, load_recipe
from autolite.runtime.hardware import probe
from autolite.runtime.roofline import dense_floor, measure_peaks, profile, roofline_rows

log = logging.getLogger(__name__)


def compare(baseline: torch.nn.Module, candidate: torch.nn.Module, tokenizer: Any, family: ArchSpec, *,
            batch: int = 8, seq: int = 128, runs: int = 10, warmup: int = 2, data: Any = None,
            fidelity_texts: int | None = 64, progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time both models interleaved on the same ``batch x seq`` input and compare their outputs."""
    inputs = bench_inputs(tokenizer, family, batch, seq)
    fns = {"baseline": forward_fn(baseline, family, inputs), "candidate": forward_fn(candidate, family, inputs)}
    first_calls = {name: first_call_seconds(fn) for name, fn in fns.items()}
    samples = interleaved(fns, runs=runs, warmup=warmup, progress=progress)
    timings = {}
    for name, model in (("baseline", baseline), ("candidate", candidate)):
        size_mb, params = model_size(model)
        timings[name] = Timing(samples_ms=samples[name], batch=batch, first_call_s=first_calls[name],
                               peak_mem_mb=peak_memory_mb(fns[name], model_device(model)),
                               size_mb=size_mb, params=params)
    fidelity = evaluate(candidate, tokenizer, reference=baseline, data=data, family=family,
                        max_texts=fidelity_texts, max_length=seq)
    return {
        "batch": batch, "seq": seq, "threads": torch.get_num_threads(),
        "baseline": timings["baseline"].to_dict(), "candidate": timings["candidate"].to_dict(),
        "speedup": timings["baseline"].median_ms / timings["candidate"].median_ms,
        "size_ratio": timings["baseline"].size_mb / timings["candidate"].size_mb,
        "fidelity": fidelity,
    }


def bench_model(spec: str, recipe: Any, *, batch: int = 8, seq: int = 128, runs: int = 10, warmup: int = 2,
                threads: int | None = None, data: Any = None, device: str = "cpu", roofline: bool = False,
                progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """``autolite bench``: load ``spec``, compress a copy with ``recipe``, compare it with FP32 eager."""
    if threads:
        torch.set_num_threads(threads)
    recipe = load_recipe(recipe)
    baseline, tokenizer, family = autolite.load(spec)
    baseline = baseline.to(resolve_device(device))
    calib = load_texts(data, split="calib")
    ctx = PassContext(family=family, tokenizer=tokenizer, calib=calib.texts, labels=calib.labels,
                      shape=(batch, seq))
    candidate = compress(copy.deepcopy(baseline), recipe, tokenizer=tokenizer, family=family, ctx=ctx)
    result = compare(baseline, candidate, tokenizer, family, batch=batch, seq=seq, runs=runs, warmup=warmup,
                     data=load_texts(data, split="heldout") if data is None else calib, progress=progress)
    if roofline:
        result["roofline"] = roofline_of(candidate, tokenizer, family, batch, seq)
    if hasattr(candidate, "path_report"):  # a routed unit (autolite.dynamic.router): shares, per-path latency
        texts = calib if data is not None else load_texts(None, split="heldout")
        result["routing"] = candidate.path_report(tokenizer, texts.texts, labels=texts.labels, batch=batch)
    result.update(model=spec, family=family.name, recipe=recipe.to_dict(), notes=ctx.notes,
                  machine=probe().to_dict(), autolite_version=autolite.__version__,
                  timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return result


def resolve_device(name: str) -> torch.device:
    """"cpu", "cuda" or "auto" (CUDA when present); a clear error when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise BackendUnavailableError(f"unknown device '{name}'; use cpu, cuda or auto")
    return torch.device(name)


def roofline_of(model: torch.nn.Module, tokenizer: Any, family: ArchSpec, batch: int, seq: int) -> dict[str, Any]:
    """Achieved GFLOP/s and weight GB/s per layer kind of ``model`` against this machine's measured peaks."""
    peaks = measure_peaks()
    run = forward_fn(model, family, bench_inputs(tokenizer, family, batch, seq))
    result = profile(model, run)
    return {"peaks": peaks, "rows": [list(row) for row in roofline_rows(result, peaks)],
            "floor": dense_floor(result, peaks, model, batch * seq)}
