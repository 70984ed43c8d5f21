"""One trial in stages, cheapest first (successive halving by proxies):

0. a pruned structure is timed under its backend *before* any recovery (its speed does not depend on the
   weights): when it cannot beat the fastest trial within budget, no distillation is spent on it. These
   timings are cached per machine, model and shape (``speed cache``), so a structure is timed once;
1. build the candidate, accuracy on the small validation proxy: clearly out of budget -> pruned;
2. speed against FP32 eager, interleaved in this process (``autolite.eval.bench``): dominated by a finished
   trial that is both faster and at least as accurate on the proxy -> pruned;
3. accuracy on the full validation split -> the trial's objective values.

A :class:`Worker` keeps what trials share: the original model, its FP32 forward at ``batch x seq`` and the
structurally pruned models (in memory, and on disk under the search state so a resumed search reuses them).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import autolite
from autolite.cache import cache_root
from autolite.config import PassConfig
from autolite.eval.bench import bench_inputs, forward_fn, interleaved, model_size
from autolite.io import write_json_atomic
from autolite.passes import PassContext, compress, import_builtin_passes
from autolite.runtime.dense_search import machine_key, read_json
from autolite.runtime.fast_dense import candidate_passes, fresh_compile_cache
from autolite.search.data import Splits, accuracy
from autolite.search.space import (has_dynamic, is_graph_backend, runtime_passes, screen_passes, structural_key,
                                   structural_passes)

log = logging.getLogger(__name__)
MEMORY_CACHE = 3  # pruned models kept in memory (more are on disk)
SCREEN_SLACK = 1.1  # a structure timed this much below the leader still goes on (timing noise)
DYNAMIC_BOUND = 1.5  # the most the screen assumes dynamic passes add to their structure (measured: <= 1.6x)


@dataclasses.dataclass
class Setup:
    """The fixed settings of one search (stored in its state directory)."""

    model: str
    batch: int
    seq: int
    max_drop: float
    objective: str
    recover_steps: int
    state_dir: str
    speed_runs: int = 3
    final_runs: int = 10
    threads: int | None = None


class Pruned(Exception):
    """A trial stopped at a cheap stage; ``attrs`` holds what it measured and why."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        super().__init__(attrs.get("pruned", ""))
        self.attrs = attrs


class Worker:
    """Runs trials in one process (the driver, or a Ray worker)."""

    def __init__(self, setup: Setup, splits: Splits, loaded: tuple | None = None) -> None:
        if setup.threads:
            torch.set_num_threads(setup.threads)
        self.setup, self.splits = setup, splits
        self.original, self.tokenizer, self.family = loaded or autolite.load(setup.model)
        self.inputs = bench_inputs(self.tokenizer, self.family, setup.batch, setup.seq, texts=splits.val.texts)
        self.baseline = forward_fn(self.original, self.family, self.inputs)
        self._cache: collections.OrderedDict[str, torch.nn.Module] = collections.OrderedDict()
        self.speeds = SpeedCache(self.original, setup.batch, setup.seq)
        self.structure_s = 0.0  # the longest prune + recovery so far (a new one is not started without that time)
        import_builtin_passes()  # every trial's recipe names registered passes

    def context(self) -> PassContext:
        ctx = PassContext(family=self.family, tokenizer=self.tokenizer, calib=list(self.splits.calib.texts),
                          labels=list(self.splits.calib.labels), shape=(self.setup.batch, self.setup.seq))
        ctx.teacher = self.original  # recovery distills from the original model, not from a pass's input
        return ctx

    def cache_dir(self, passes: list[dict[str, Any]]) -> Path:
        return Path(self.setup.state_dir) / "cache" / structural_key(passes)

    def structural(self, passes: list[dict[str, Any]]) -> torch.nn.Module:
        """The pruned (+ recovered) model for ``passes``: memory, then disk, else built and stored."""
        key = structural_key(passes)
        if not passes:
            return self.original
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.cache_dir(passes)
        if (path / "config.json").is_file():
            model = autolite.load(path)[0]
        else:
            start = time.perf_counter()
            configs = [PassConfig.from_dict(p) for p in passes]
            model = compress(self.original, configs, tokenizer=self.tokenizer, family=self.family, ctx=self.context())
            self.structure_s = max(self.structure_s, time.perf_counter() - start)
            try:
                autolite.save_model(model, self.tokenizer, path, overwrite=True)
            except OSError as exc:  # the disk cache is best-effort (e.g. two Ray workers storing the same model)
                log.info("not cached: %s", exc)
        self._cache[key] = model
        while len(self._cache) > MEMORY_CACHE:
            self._cache.popitem(last=False)
        return model

    def build(self, params: dict[str, Any]) -> tuple[torch.nn.Module, list[dict[str, Any]], list[str]]:
        """The candidate model, its whole recipe (pass dicts) and the passes' notes."""
        structure = structural_passes(params, self.setup.recover_steps)
        runtime = runtime_passes(params)
        base = self.structural(structure)
        ctx = self.context()
        configs = [PassConfig.from_dict(p) for p in runtime]
        fresh_compile_cache(configs)
        model = compress(base, configs, tokenizer=self.tokenizer, family=self.family, ctx=ctx)
        return model, structure + runtime, ctx.notes

    def speed(self, model: torch.nn.Module, runs: int, warmup: int = 1) -> dict[str, Any]:
        """FP32 eager and ``model`` timed A B A B at ``batch x seq`` on validation text; median ms, energy."""
        fns = {"fp32": self.baseline, "candidate": forward_fn(model, self.family, self.inputs)}
        samples = interleaved(fns, runs=runs, warmup=warmup)
        medians, joules = median_ms_joules(samples, self.setup.batch)
        return {"fp32_ms": medians["fp32"], "ms": medians["candidate"],
                "speedup": medians["fp32"] / medians["candidate"],
                "joules": joules["candidate"], "fp32_joules": joules["fp32"],
                "energy_source": samples["candidate"].energy_source}

    def screen(self, params: dict[str, Any]) -> float:
        """Speed-up over FP32 eager of the params' structure under their backend, without dynamic passes and
        before recovery: from the speed cache, else cut cheaply (:func:`screen_passes`), converted and timed."""
        key = speed_key(params)
        if key not in self.speeds:
            configs = [PassConfig.from_dict(p) for p in screen_passes(params) + candidate_passes(params["backend"])]
            fresh_compile_cache(configs)
            model = compress(self.original, configs, tokenizer=self.tokenizer, family=self.family, ctx=self.context())
            self.speeds[key] = self.speed(model, runs=2)["speedup"]
        return self.speeds[key]

    def gate_structure(self, params: dict[str, Any], gate: dict[str, Any]) -> None:
        """Stage 0: raise :class:`Pruned` before any recovery when the trial cannot run or cannot beat the leader."""
        if has_dynamic(params) and is_graph_backend(params["backend"]):
            raise Pruned({"stage": 0, "pruned": f"dynamic passes run in torch; {params['backend']} runs one "
                                                f"exported graph"})
        structure = structural_passes(params, self.setup.recover_steps)
        left = gate.get("seconds_left", float("inf"))
        built = structural_key(structure) in self._cache or (self.cache_dir(structure) / "config.json").is_file()
        if structure and not built and left < self.structure_s:
            raise Pruned({"stage": 0, "pruned": f"a prune + recovery takes ~{self.structure_s:.0f} s here, "
                                                f"{left:.0f} s of the budget are left"})
        leader = gate.get("leader")
        if not structure or not leader or self.setup.objective == "size":
            return
        start = time.perf_counter()
        screened = self.screen(params)
        bound = screened * (DYNAMIC_BOUND if has_dynamic(params) else 1.0)
        if bound * SCREEN_SLACK < leader["score"]:
            raise Pruned({"stage": 0, "screen_speedup": screened, "seconds": round(time.perf_counter() - start, 2),
                          "pruned": f"its structure times {screened:.2f}x before recovery (at most {bound:.2f}x); "
                                    f"trial {leader['number']} within budget is {leader['score']:.2f}x"})

    def run(self, params: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
        """All stages; returns the trial's attributes or raises :class:`Pruned`."""
        start = time.perf_counter()
        self.gate_structure(params, gate)
        attrs: dict[str, Any] = {}
        model, recipe, notes = self.build(params)
        attrs.update(recipe=recipe, notes=notes[-6:], build_s=round(time.perf_counter() - start, 2))
        attrs["small_acc"] = accuracy(model, self.tokenizer, self.splits.small_val, self.setup.seq)
        slack = proxy_slack(gate["ref_small"], len(self.splits.small_val))
        if attrs["small_acc"] < gate["ref_small"] - gate["max_drop"] - slack:
            raise Pruned(dict(attrs, stage=1, pruned=f"proxy accuracy {attrs['small_acc']:.1f}% is more than "
                              f"{gate['max_drop'] + slack:.1f} points below FP32's {gate['ref_small']:.1f}%"))
        attrs.update(self.speed(model, self.setup.speed_runs))
        if not has_dynamic(params):  # the same shapes as the cheap cut: later screens of this structure reuse it
            self.speeds[speed_key(params)] = attrs["speedup"]
        attrs["size_mb"] = model_size(model)[0]
        attrs["score"] = score(attrs, self.setup.objective)
        for other in gate.get("incumbents", []):
            if other["small_acc"] >= attrs["small_acc"] and other["score"] >= 1.05 * attrs["score"]:
                raise Pruned(dict(attrs, stage=2, pruned=f"dominated by trial {other['number']} on the proxy"))
        attrs["val_acc"] = accuracy(model, self.tokenizer, self.splits.val, self.setup.seq)
        attrs.update(stage=3, seconds=round(time.perf_counter() - start, 2))
        return attrs


def speed_key(params: dict[str, Any]) -> str:
    """What a trial's speed depends on: its structure's shapes and its backend's passes."""
    return json.dumps([screen_passes(params), candidate_passes(params["backend"])], sort_keys=True)


class SpeedCache:
    """Speed-ups over FP32 eager by (structure, backend), per machine, model and shape, in the autolite cache
    directory (a later search on this machine starts with them); a corrupted file is ignored and rewritten."""

    def __init__(self, model: torch.nn.Module, batch: int, seq: int) -> None:
        first = next(model.parameters()).detach().flatten()[:4096].float().sum().item()
        identity = [machine_key(), model.config.model_type, sum(p.numel() for p in model.parameters()),
                    round(first, 6), batch, seq]
        name = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:20]
        self.path = cache_root() / "optimize-speed" / f"{name}.json"
        self.data: dict[str, float] = read_json(self.path, ()) or {}

    def __contains__(self, key: str) -> bool:
        return isinstance(self.data.get(key), (int, float))

    def __getitem__(self, key: str) -> float:
        return float(self.data[key])

    def __setitem__(self, key: str, speedup: float) -> None:
        self.data[key] = round(float(speedup), 4)
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:  # best-effort, like the model cache
            log.info("speed cache not written: %s", exc)


def median_ms_joules(samples: dict[str, Any], batch: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median milliseconds per call and median joules per inference of each series from ``interleaved``."""
    return ({name: statistics.median(s) for name, s in samples.items()},
            {name: statistics.median(s.joules) / batch for name, s in samples.items()})


def proxy_slack(reference: float, rows: int) -> float:
    """Two standard errors of an accuracy (points) on ``rows`` rows: the proxy's noise margin (at least 1)."""
    p = min(max(reference / 100.0, 0.05), 0.95)
    return max(1.0, 200.0 * math.sqrt(p * (1 - p) / max(rows, 1)))


def score(attrs: dict[str, Any], objective: str) -> float:
    """Higher is better: speed-up over FP32 eager (latency, throughput) or 1 / MiB (size)."""
    return 1.0 / max(attrs["size_mb"], 1e-9) if objective == "size" else attrs["speedup"]


def run_safely(worker: Worker, params: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """``Worker.run`` as a plain result: ``{"state": complete|pruned|failed, "attrs": {...}}``."""
    try:
        return {"state": "complete", "attrs": worker.run(params, gate)}
    except Pruned as exc:
        return {"state": "pruned", "attrs": exc.attrs}
    except Exception as exc:  # a candidate that cannot run here (a pass combination, a backend) is a failed trial
        log.info("trial %s failed: %s", params, exc)
        return {"state": "failed", "attrs": {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}}
