"""The fast-dense search: predict which candidates can win from the machine's measured kernel peaks, time only
those, and race each against the leader so a loser stops after a run or two.

1. **Peaks** (:func:`machine_peaks`): FP32, BF16 (where native) and INT8 GEMM throughput of this machine,
   measured once and cached per machine (a corrupted cache file is ignored and re-measured).
2. **Floors**: a candidate's linear layers cannot run faster than ``linear FLOPs / peak of its layer kind``
   (INT8 for quantized candidates, BF16 for BF16 ones, else FP32). Other backends' kernels may beat torch's
   measured peak by a margin, so the bound is taken ``FLOOR_SLACK`` lower. Candidates are tried in order of
   their predicted time, ``floor / the share of its floor the candidate reached in earlier searches on this
   machine`` (cached; on a fresh machine: lowest floor first); one whose floor is above the leader's median
   is skipped unbuilt ("cannot win").
3. **Race** (successive halving over runs): a candidate is first warmed up until its call time settles
   (:func:`warm_up`: OpenVINO's first calls at a new shape are several times slower than its steady state, and
   one warm-up call had it timed at a third of its speed), then each round doubles the candidate's runs (1, 2,
   4, ... up to ``runs``) and the candidate stops as soon as its fastest run is slower than the leader's median.
   The FP32 baseline (the slowest model, only needed for the reported speedups) runs once next to each
   candidate while that is cheap; past three samples costing 5% of the budget it is not timed again.
4. **Fidelity** is checked before a candidate is timed (a candidate out of bounds is never timed), and the
   whole search respects ``budget_s``: once spent, the remaining candidates are skipped with that reason, and
   so is one whose last try on this machine (its build, fidelity and timing seconds, cached) would overrun it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from autolite.cache import cache_root
from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError
from autolite.eval.bench import bench_inputs, forward_fn, settle
from autolite.eval.fidelity import evaluate
from autolite.io import write_json_atomic
from autolite.passes import PassContext, compress, import_builtin_passes
from autolite.runtime.hardware import probe
from autolite.runtime.roofline import dense_floor, measure_peaks

log = logging.getLogger(__name__)
FLOOR_SLACK = 0.7  # another backend's GEMM may beat torch's measured peak by up to ~1/0.7
PEAKS_VERSION = 1
INT8_PASSES = {"int8-dynamic", "int8-static"}
WARMUP_MAX_CALLS = 8  # a candidate's untimed calls before its race, at most
WARMUP_SETTLED_CALLS = 2  # ... ending once this many calls in a row are
WARMUP_SETTLED = 1.15  # ... within this factor of the fastest warm-up call after the first
WARMUP_MAX_S = 6.0  # ... or once the calls after the first took this long (batch 32 on a large model)
BASELINE_MIN_SAMPLES = 3  # the baseline's timed calls, at least (then only while cheap: Race.wants_baseline)
BASELINE_SHARE = 0.05  # ... of the search budget, its samples together
MIN_FLOOR_MS = 1.0  # runs with smaller floors (tiny models) teach no efficiency shares


def time_once(name: str, fn: Callable[[], Any]) -> float:
    """Milliseconds of one call of ``fn`` (``name`` says whose; tests replace this with a fake clock)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def machine_key() -> str:
    """The machine, torch and thread count, hashed (what a cached peak or decision depends on)."""
    info = probe()
    machine = [info.cpu_model, info.logical_cores, sorted(k for k, v in info.isa.items() if v),
               [g.get("name") for g in info.gpus], torch.__version__, torch.get_num_threads()]
    return hashlib.sha256(json.dumps(machine, default=str).encode()).hexdigest()[:20]


def read_json(path: Path, required: tuple[str, ...]) -> dict | None:
    """A cached JSON object with ``required`` keys, or None when absent or corrupted (never trusted then)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or any(k not in data for k in required):
        log.warning("ignoring a corrupted cache entry %s (rebuilding it)", path.name)
        return None
    return data


def machine_peaks(measure: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """FP32 / BF16 / INT8 GEMM peaks of this machine (GFLOP/s, GOP/s), measured once and cached."""
    path = cache_root() / "peaks" / f"{machine_key()}-v{PEAKS_VERSION}.json"
    peaks = read_json(path, ("gemm_gflops", "int8_gemm_gops"))
    if peaks is None or not all(isinstance(v, (int, float)) and v > 0
                                for v in (peaks["gemm_gflops"], peaks["int8_gemm_gops"])):
        peaks = (measure or measure_peaks)()
        write_json_atomic(path, peaks, indent=1)
    return peaks


def linear_gflop(model: torch.nn.Module, tokens: int) -> float:
    """GFLOP of the model's linear layers for ``tokens`` tokens (``2 x tokens x in x out`` each)."""
    return dense_floor({"rows": {}}, {"gemm_gflops": 1.0}, model, tokens).get("linear_gflop", 0.0)


def layer_kind(passes: list[dict]) -> str:
    """The GEMM kind a candidate's linears run in: "int8", "bf16" or "fp32"."""
    for p in passes:
        if p.get("pass") in INT8_PASSES or (p.get("pass") in ("onnxruntime", "openvino")
                                           and str(p.get("precision", "")).startswith("int8")):
            return "int8"
    for p in passes:
        if p.get("dtype") in ("bf16", "fp16", "auto") or (p.get("pass") == "openvino"
                                                           and p.get("precision") in ("auto", "bf16")):
            return "bf16"
    return "fp32"


def floor_ms(gflop: float, kind: str, peaks: dict[str, Any]) -> float:
    """Lower bound (ms) on a forward whose linears run at ``kind``'s peak (times ``FLOOR_SLACK``)."""
    peak = {"int8": peaks.get("int8_gemm_gops"), "bf16": peaks.get("bf16_gemm_gflops")}.get(kind)
    peak = peak or peaks["gemm_gflops"]
    return gflop / peak * 1e3 * FLOOR_SLACK


def predicted_floors(candidates: list[tuple[str, list[dict]]], gflop: float, peaks: dict[str, Any],
                     baseline_ms: float) -> dict[str, float]:
    """Each candidate's floor (ms). FP32 eager itself runs its linears at most at the FP32 peak, so a floor
    above the measured baseline means the peaks were measured under load: all floors are scaled down."""
    floors = {name: floor_ms(gflop, layer_kind(passes), peaks) for name, passes in candidates}
    too_high = floor_ms(gflop, "fp32", peaks) / FLOOR_SLACK / baseline_ms if baseline_ms > 0 else 0.0
    if too_high > 1.0:
        log.info("fast-dense: FP32 eager ran above the cached FP32 peak; floors scaled by 1/%.2f", too_high)
        floors = {name: value / too_high for name, value in floors.items()}
    return floors


def shape_class(batch: int, seq: int) -> str:
    """Which kind of run an efficiency was learned on: small (latency) or large (throughput) batches."""
    return "small" if batch * seq <= 512 else "large"


class Efficiency:
    """What share of its floor each candidate reached in earlier searches on this machine (per shape class),
    cached: candidates are tried in order of ``floor / efficiency`` (a fresh machine: floor, then list order).
    Also the seconds trying each took, per shape class and size of the run (``gflop``, in powers of two).
    Runs whose floors are under ``MIN_FLOOR_MS`` (tiny models: overhead, not GEMMs) teach no shares."""

    def __init__(self, shape: str, gflop: float = 0.0) -> None:
        self.path = cache_root() / "peaks" / f"{machine_key()}-efficiency.json"
        self.shape = shape
        self.size = f"{shape}_s@{round(math.log2(gflop)) if gflop > 0 else 0}"
        data = read_json(self.path, ())
        self.data = data if data is not None and all(isinstance(v, dict) for v in data.values()) else {}

    def predicted_ms(self, name: str, floor: float) -> float:
        share = self.data.get(name, {}).get(self.shape)
        return floor / share if isinstance(share, (int, float)) and share > 0 else floor

    def cost_s(self, name: str) -> float:
        """Seconds trying ``name`` took last time at this shape class (build, fidelity, timing); 0 if never."""
        cost = self.data.get(name, {}).get(self.size)
        return float(cost) if isinstance(cost, (int, float)) and cost > 0 else 0.0

    def update(self, measured: dict[str, dict[str, Any]], floors: dict[str, float]) -> None:
        for name, verdict in measured.items():
            if "median_ms" in verdict and floors.get(name, 0.0) >= MIN_FLOOR_MS:
                self.data.setdefault(name, {})[self.shape] = round(floors[name] / verdict["median_ms"], 4)
            if "search_s" in verdict:
                self.data.setdefault(name, {})[self.size] = verdict["search_s"]
        write_json_atomic(self.path, self.data, indent=1)


class Race:
    """Times candidates against the baseline and a leader: the baseline runs next to a candidate's first round
    (what its speedup is measured against; it is the slowest model here) while :meth:`wants_baseline`, the rounds
    double."""

    def __init__(self, baseline_fn: Callable[[], Any], runs: int, budget_s: float = math.inf) -> None:
        self.baseline_fn, self.runs, self.budget_s = baseline_fn, runs, budget_s
        self.baseline_ms: list[float] = []
        self.leader: tuple[str, float] | None = None  # (name, median ms)

    def baseline_median(self) -> float:
        return statistics.median(self.baseline_ms)

    def wants_baseline(self) -> bool:
        """Whether to time the baseline next to the next candidate: until it has ``BASELINE_MIN_SAMPLES``, then
        while its samples together cost under ``BASELINE_SHARE`` of the budget (FP32 eager of BERT-base at batch
        32 takes ~4.7 s a call: one next to each of six candidates was a third of a 90 s search)."""
        return (len(self.baseline_ms) < BASELINE_MIN_SAMPLES
                or sum(self.baseline_ms) < BASELINE_SHARE * self.budget_s * 1000.0)

    def run(self, name: str, fn: Callable[[], Any]) -> dict[str, Any]:
        """Race ``fn`` (already warmed up): rounds of 1, 2, 4... runs until ``runs`` or it cannot win."""
        samples: list[float] = []
        k = 1
        while len(samples) < self.runs:
            if k == 1 and self.wants_baseline():
                settle()
                self.baseline_ms.append(time_once("baseline", self.baseline_fn))
                settle()  # the baseline's (PyTorch's) threads park before the candidate's engine starts
            samples += [time_once(name, fn) for _ in range(min(k, self.runs - len(samples)))]
            if self.leader and min(samples) > self.leader[1]:
                break
            k *= 2
        median = statistics.median(samples)
        verdict = {"median_ms": round(median, 2), "runs": len(samples)}
        if len(samples) < self.runs:
            verdict["stopped"] = (f"after {len(samples)} of {self.runs} runs: fastest {min(samples):.1f} ms > "
                                  f"leader {self.leader[0]} {self.leader[1]:.1f} ms")
        elif self.leader is None or median < self.leader[1]:
            self.leader = (name, median)
        return verdict


def build(model: torch.nn.Module, passes: list[dict], ctx: PassContext) -> torch.nn.Module | str:
    """The candidate applied to a copy of ``model``, or why this machine/model cannot run it."""
    import_builtin_passes()
    inner = PassContext(family=ctx.family, tokenizer=ctx.tokenizer, calib=ctx.calib, labels=ctx.labels,
                        shape=ctx.shape)
    configs = [PassConfig.from_dict(p) for p in passes]
    fresh_compile_cache(configs)
    try:
        return compress(copy.deepcopy(model), configs, tokenizer=ctx.tokenizer, family=ctx.family, ctx=inner)
    except BackendUnavailableError as exc:
        return f"unavailable: {exc}"


def needs_compile(passes: list[dict]) -> bool:
    """Whether building the candidate runs ``torch.compile`` (tens of seconds; the others build in seconds)."""
    return any(p.get("pass") == "compile" for p in passes)


def fresh_compile_cache(configs: list[PassConfig]) -> None:
    """Reset dynamo before compiling a candidate: each candidate is a deep copy with its own parameter
    objects, and guards on the previous copies' parameter ids would otherwise pile up to the recompile limit."""
    if any(c.name == "compile" for c in configs):
        torch._dynamo.reset()


def search(model: torch.nn.Module, candidates: list[tuple[str, list[dict]]], ctx: PassContext, *,
           batch: int, seq: int, runs: int, budget_s: float,
           fidelity_ok: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Measure ``candidates`` (name, passes) on ``model`` at ``batch x seq``; returns name -> verdict.

    A timed verdict has ``speedup``, ``median_ms``, ``baseline_ms``, ``runs``, ``ok``, the fidelity numbers,
    ``search_s`` and, when stopped early, ``stopped``; a skipped one has ``skipped`` (the reason).
    """
    start = time.perf_counter()
    inputs = bench_inputs(ctx.tokenizer, ctx.family, batch, seq)
    race = Race(forward_fn(model, ctx.family, inputs), runs, budget_s)
    race.baseline_fn()  # warm-up
    race.baseline_ms.append(time_once("baseline", race.baseline_fn))
    gflop = linear_gflop(model, batch * seq)
    floors = predicted_floors(candidates, gflop, machine_peaks(), race.baseline_ms[0])
    texts = list(ctx.calib or [])[:32] or None
    measured: dict[str, dict[str, Any]] = {}
    history = Efficiency(shape_class(batch, seq), gflop)
    def order(candidate: tuple[str, list[dict]]) -> tuple[bool, float]:
        return needs_compile(candidate[1]), history.predicted_ms(candidate[0], floors[candidate[0]])

    for name, passes in sorted(candidates, key=order):
        began = time.perf_counter()
        reason = _skip_reason(floors[name], race, began - start, history.cost_s(name), budget_s)
        candidate = reason or build(model, passes, ctx)
        if isinstance(candidate, str):
            measured[name] = {"skipped": candidate}
            continue
        verdict = fidelity_ok(evaluate(candidate, ctx.tokenizer, reference=model, data=texts, family=ctx.family,
                                       max_texts=32, max_length=seq))
        if verdict["ok"]:
            verdict.update(_timed(name, forward_fn(candidate, ctx.family, inputs), race, batch, seq))
        verdict["search_s"] = round(time.perf_counter() - began, 3)  # build + compile + fidelity + timing
        measured[name] = verdict
        log.info("fast-dense candidate %s: %s", name, verdict)
        del candidate
    history.update(measured, floors)
    return measured


def warm_up(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Call ``fn`` until its time settles; returns the warm-up calls' ms. The first call compiles or builds
    kernels; OpenVINO's next few at a new shape are still several times slower than its steady state, so
    warming stops only when the last ``WARMUP_SETTLED_CALLS`` calls are each within ``WARMUP_SETTLED`` of
    the fastest so far, or after ``WARMUP_MAX_CALLS`` calls or ``WARMUP_MAX_S`` seconds past the first."""
    times: list[float] = []
    while len(times) < WARMUP_MAX_CALLS:
        start = clock()
        fn()
        times.append((clock() - start) * 1000.0)
        settled = times[-WARMUP_SETTLED_CALLS:]
        if len(times) > WARMUP_SETTLED_CALLS and max(settled) <= min(times[1:]) * WARMUP_SETTLED:
            break
        if sum(times[1:]) > WARMUP_MAX_S * 1000.0:
            break
    return times


def _timed(name: str, fn: Callable[[], Any], race: Race, batch: int, seq: int) -> dict[str, Any]:
    """Warm ``fn`` up until its time settles and race it; a backend that cannot run this shape is skipped with
    why."""
    try:
        warm = warm_up(fn)
    except Exception as exc:  # noqa: BLE001 - engines raise their own types; the candidate is skipped, said why
        return {"skipped": f"cannot run batch {batch} x seq {seq}: {str(exc).splitlines()[0][:200]}", "ok": False}
    verdict = race.run(name, fn)
    verdict["warmup_calls"] = len(warm)
    verdict["speedup"] = round(race.baseline_median() / verdict["median_ms"], 3)
    verdict["baseline_ms"] = round(race.baseline_median(), 2)
    return verdict


def _skip_reason(floor: float, race: Race, spent: float, cost: float, budget_s: float) -> str | None:
    """Why a candidate is not tried at all: the budget is spent, or would be before it is done (``cost``: the
    seconds trying it took last time on this machine), or its floor is above the leader."""
    if race.leader is None:
        return None
    if spent > budget_s:
        return f"search budget ({budget_s:.0f} s) spent"
    if spent + cost > budget_s:
        return (f"search budget ({budget_s:.0f} s) would be spent before it is done: {spent:.0f} s spent, trying "
                f"it took {cost:.0f} s last time")
    if floor >= race.leader[1]:
        return (f"cannot win: its linears alone need >= {floor:.1f} ms at this machine's measured GEMM peak, "
                f"the leader {race.leader[0]} takes {race.leader[1]:.1f} ms")
    return None
