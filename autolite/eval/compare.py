"""Baseline vs candidate in one process: interleaved timing, memory, size, fidelity."""
from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import statistics
from typing import Any, Callable, Iterator

import torch

import autolite
from autolite.arch import ArchSpec
from autolite.data import load_texts
from autolite.errors import AutoliteError, BackendUnavailableError
from autolite.eval.bench import (Timing, bench_inputs, first_call_seconds, forward_fn, interleaved, model_size,
                                 peak_memory_mb)
from autolite.eval.fidelity import evaluate
from autolite.eval.forward import model_device
from autolite.passes import PassContext, compress, load_recipe
from autolite.runtime.decode import Decoder, generate
from autolite.runtime.hardware import probe
from autolite.runtime.roofline import dense_floor, measure_peaks, profile, roofline_rows

log = logging.getLogger(__name__)
DECODE_PROMPT = "The history of the city began"


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


def decode_speed(models: dict[str, torch.nn.Module], tokenizer: Any, family: ArchSpec, *, tokens: int = 64,
                 runs: int = 3, compile: bool = True, prompt: str = DECODE_PROMPT) -> dict[str, Any]:
    """Batch-1 greedy decode tokens/s of each model on autolite's own decode loop (:mod:`autolite.runtime.decode`:
    static KV cache, compiled step), exactly ``tokens`` new tokens (EOS ignored), interleaved after one warm-up
    (which compiles); the median of ``runs`` per model, prefill not counted."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    decoders = {name: Decoder(model, family, compile=compile) for name, model in models.items()}
    caches = {name: d.new_cache(1, len(ids) + tokens) for name, d in decoders.items()}
    samples: dict[str, list[float]] = {name: [] for name in decoders}
    with eos_ignored(tokenizer):
        for run in range(runs + 1):
            for name, decoder in decoders.items():
                out = generate(decoder, tokenizer, ids, tokens, cache=caches[name])
                if run:  # the first round warms up (and compiles)
                    samples[name].append(out.tokens_per_s)
    result: dict[str, Any] = {"prompt_tokens": len(ids), "new_tokens": tokens, "runs": runs, "compiled": compile,
                              "threads": torch.get_num_threads()}
    for name, values in samples.items():
        result[name] = {"tokens_per_s": statistics.median(values), "samples": values}
    if "baseline" in samples and "candidate" in samples:
        result["speedup"] = result["candidate"]["tokens_per_s"] / result["baseline"]["tokens_per_s"]
    return result


@contextlib.contextmanager
def eos_ignored(tokenizer: Any) -> Iterator[None]:
    """Generation runs its full length (a speed measurement must not stop at a random model's EOS)."""
    eos = tokenizer.eos_token_id
    tokenizer.eos_token_id = None
    try:
        yield
    finally:
        tokenizer.eos_token_id = eos


def bench_model(spec: str, recipe: Any, *, batch: int = 8, seq: int = 128, runs: int = 10, warmup: int = 2,
                threads: int | None = None, data: Any = None, device: str = "cpu", roofline: bool = False,
                decode_tokens: int = 64, progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """``autolite bench``: load ``spec``, compress a copy with ``recipe``, compare it with FP32 eager; for a
    decoder (Llama-like or GPT-2, on CPU) also batch-1 decode tokens/s on autolite's decode loop."""
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
    if decode_tokens and family.kind == "decoder" and resolve_device(device).type != "cpu":
        ctx.note("decode tokens/s not measured: autolite's decode loop is measured on CPU only")
    elif decode_tokens and family.kind == "decoder":
        try:
            result["decode"] = decode_speed({"baseline": baseline, "candidate": candidate}, tokenizer, family,
                                            tokens=decode_tokens)
        except AutoliteError as exc:  # e.g. a family or layer the decode loop does not run
            ctx.note(f"decode tokens/s not measured: {exc}")
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
