"""Benchmark harness: the FP32 eager baseline and the candidate timed interleaved in one process.

Each timed call is one forward of a ``batch x seq`` batch of real corpus tokens. After warm-up
(which also triggers compilation), the two models alternate A B A B ... so that drift in machine
state (frequency, caches, other load) hits both equally; ``speedup = baseline median / candidate
median``. Before each timed call the harness pauses :data:`SETTLE_S` (:func:`settle`), so the previous
engine's idle threads have stopped spinning when the next one starts.
"""
from __future__ import annotations

import ctypes
import dataclasses
import statistics
import threading
import time
from typing import Any, Callable

import psutil
import torch

from autolite.arch import ArchSpec
from autolite.data import corpus
from autolite.errors import DataError
from autolite.eval.energy import EnergyMeter, summarize
from autolite.eval.forward import ensure_pad_token, model_device, model_inputs
from autolite.weights import stored_weights


SETTLE_S = 0.03  # pause before a timed call that follows another engine's (see settle)


def settle(seconds: float = SETTLE_S) -> None:
    """Let the previous call's thread pool park before the next timed call. PyTorch's OpenMP workers (and ONNX
    Runtime's) spin-wait for several ms after their work, on the cores the next engine needs: an OpenVINO
    forward timed right after a PyTorch one ran ~20% slower (BERT-base b1, 2 cores), and after a 20-50 ms pause
    as fast as alone. A deployment runs one engine, so interleaved timing leaves this gap between engines."""
    time.sleep(seconds)


@dataclasses.dataclass
class Timing:
    """Latency statistics of one model, in milliseconds per batch."""

    samples_ms: list[float]
    batch: int
    first_call_s: float = 0.0
    peak_mem_mb: float | None = None
    size_mb: float | None = None
    params: int | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def energy(self) -> dict[str, Any] | None:
        """Joules per inference, when the samples came from :func:`interleaved` (see :mod:`autolite.eval.energy`)."""
        joules = getattr(self.samples_ms, "joules", None)
        if joules is None:
            return None
        return summarize(joules, self.batch, self.samples_ms.energy_source, self.samples_ms.energy_note)

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "min_ms": min(self.samples_ms), "max_ms": max(self.samples_ms),
                "runs": len(self.samples_ms), "throughput_per_s": self.batch * 1000.0 / self.median_ms,
                "first_call_s": self.first_call_s, "peak_mem_mb": self.peak_mem_mb,
                "size_mb": self.size_mb, "params": self.params, "energy": self.energy,
                "samples_ms": list(self.samples_ms)}


class SampleList(list):
    """Latency samples (ms) of one model, carrying the energy of each timed call (joules) alongside."""

    joules: list[float]
    energy_source: str = ""
    energy_note: str = ""


def bench_inputs(tokenizer: Any, family: ArchSpec, batch: int, seq: int,
                 texts: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``batch x seq`` token ids cut from the tokenized corpus (or ``texts``; no padding), attention mask all ones."""
    ensure_pad_token(tokenizer)
    ids: list[int] = []
    for text in texts or corpus().texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= batch * seq:
            break
    if not ids:  # else the loop below would extend an empty list forever
        raise DataError("the tokenizer turned the texts into no tokens; is the model directory's tokenizer complete?")
    while len(ids) < batch * seq:
        ids.extend(ids)
    input_ids = torch.tensor(ids[: batch * seq]).view(batch, seq)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def forward_fn(model: torch.nn.Module, family: ArchSpec, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """A zero-argument callable running one inference forward (inputs already on the model's device)."""
    inputs = model_inputs(family, batch, model_device(model))
    sync = torch.cuda.synchronize if model_device(model).type == "cuda" else (lambda: None)

    def run() -> Any:
        with torch.no_grad():
            out = model(**inputs, use_cache=False) if family.kind != "encoder" else model(**inputs)
        sync()
        return out
    return run


def interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int,
                progress: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Time each function ``runs`` times, alternating between them, after ``warmup`` calls each.

    Each returned list is a :class:`SampleList` that also holds the energy of every timed call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    meter = EnergyMeter()
    samples: dict[str, SampleList] = {name: SampleList() for name in fns}
    for series in samples.values():
        series.joules, series.energy_source, series.energy_note = [], meter.source, meter.note
    for _ in range(runs):
        for name, fn in fns.items():
            settle()
            meter.start()
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000.0)
            samples[name].joules.append(meter.stop())
        if progress:
            progress()
    return samples


def first_call_seconds(fn: Callable[[], Any]) -> float:
    """Wall time of the first call (includes compilation for compiled models)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def release_free_heap() -> None:
    """glibc ``malloc_trim(0)``: return free heap pages to the OS (a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak extra memory of one call: CUDA allocator peak, or the process RSS rise sampled every 1 ms (after
    handing the heap's free pages back to the OS, else a warmed-up call reuses them and shows almost no rise)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    release_free_heap()
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0] - start, 0) / 2**20


def model_size(model: torch.nn.Module) -> tuple[float, int]:
    """(MiB of weights held in memory, number of parameter elements).

    Unique tensor storage from the state dict, except weights memory-mapped from disk (a model whose forward
    runs in another engine, see ``autolite.runtime.external``: its storage pointers are in ``_autolite_mapped``),
    plus the memory that engine holds (``_autolite_held_mb``)."""
    seen: set[int] = set(getattr(model, "_autolite_mapped", ()))
    total = 0
    for tensor in model.state_dict().values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    params = sum(stored_weights(model).values())  # packed INT8/INT4 weights are buffers, not parameters
    return total / 2**20 + float(getattr(model, "_autolite_held_mb", 0.0)), params
