"""The ``fast-dense`` pass: measure candidate dense recipes for this model on this machine, keep the fastest
whose fidelity stays in bounds, cache the decision, apply it.

The search (:mod:`autolite.runtime.dense_search`) predicts from the machine's measured GEMM peaks which
candidates can still win, checks fidelity first (encoders: mean embedding cosine >= ``min_cosine``;
decoders/seq2seq: perplexity change <= ``max_ppl_change``), and races each candidate against the leader at
the requested ``batch x seq``, interleaved with the FP32 eager model, stopping a loser after a run or two.
The decision is cached per (machine, model, shape, candidates) under the autolite cache dir (each candidate
with the seconds it took to try, ``search_s``; a corrupted entry is ignored and re-measured), and the chosen
passes are recorded in ``chosen`` so ``autolite.load`` replays them.

Candidates include the ONNX Runtime backend (``ort-fp32``, ``ort-int8`` dynamic, ``ort-int8-static``
calibrated QDQ) and OpenVINO (``openvino`` BF16 where native, ``openvino-int8`` NNCF, ``openvino-int8-static``
the same compiled for the searched batch x seq, ``openvino-int8-streams`` that in two streams at batch >= 2);
encoders only: elsewhere they are skipped with the reason in the notes. Dynamo is reset before each compiled
candidate.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from autolite.cache import cache_root
from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.io import write_json_atomic
from autolite.passes import PassContext, apply_pass, handler_for, load_recipe, register_pass
from autolite.runtime import dense_search, hardware
from autolite.runtime.dense_search import fresh_compile_cache, machine_key, read_json
from autolite.runtime.dense_search import build as _build  # noqa: F401 - the benchmarks' candidate builder

log = logging.getLogger(__name__)
SEARCH_VERSION = 3  # bump when the search changes what a cached decision means (2: floors + race; 3: warm-up)
# Likely winners first: candidates with equal floors are tried in this order (the search's budget may end it)
DEFAULT_CANDIDATES = ["ort-int8", "openvino-int8", "openvino-int8-static", "openvino-int8-streams", "ort-int8-static",
                      "int8-dynamic", "int8-dynamic+compile", "openvino", "bf16-compile", "ort-fp32", "compile", "fp32"]
COMBINED = {"int8-dynamic+compile": [{"pass": "int8-dynamic"},
                                     {"pass": "compile", "backend": "inductor", "freeze": True}],
            "ort-int8-static": [{"pass": "onnxruntime", "precision": "int8-static"}],
            "openvino": [{"pass": "openvino", "precision": "auto"}],
            "openvino-int8": [{"pass": "openvino", "precision": "int8"}],
            # the same IR compiled for the searched batch x seq (smaller inputs padded up to it)
            "openvino-int8-static": [{"pass": "openvino", "precision": "int8", "static": True}],
            # ... and in two streams, each running half the batch rows on its share of the threads
            "openvino-int8-streams": [{"pass": "openvino", "precision": "int8", "static": True, "streams": 2}]}


@dataclasses.dataclass
class FastDense(PassConfig):
    """Pick the fastest dense recipe that keeps fidelity, by measurement at ``batch x seq``.

    ``candidates``: preset names (or "int8-dynamic+compile"); BF16/FP16 ones are skipped where the CPU
    has no native support. ``runs``: the most timed runs per candidate (a loser stops sooner);
    ``budget_s``: once spent, candidates not yet tried are skipped (the best so far wins).
    ``use_cache``: reuse an earlier decision for the same machine/model/shape.
    ``chosen``: filled in with the applied passes (replayed on load).
    """

    name = "fast-dense"
    batch: int = 8
    seq: int = 128
    runs: int = 3
    budget_s: float = 90.0
    min_cosine: float = 0.99
    max_ppl_change: float = 0.02
    candidates: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    use_cache: bool = True
    chosen: list[dict] | None = None

    def __post_init__(self) -> None:
        if self.batch < 1 or self.seq < 2 or self.runs < 1 or self.budget_s <= 0:
            raise RecipeError("fast-dense needs batch >= 1, seq >= 2, runs >= 1 and budget_s > 0")
        if not self.candidates:
            raise RecipeError("fast-dense needs at least one candidate recipe")
        for name in self.candidates:
            candidate_passes(name)  # raises RecipeError for an unknown name


def candidate_passes(name: str, shape: tuple[int, int] | None = None) -> list[dict]:
    """The pass dicts of a candidate name; a static-shape pass is given ``shape`` (batch, seq)."""
    if name in COMBINED:
        passes = copy.deepcopy(COMBINED[name])
        for entry in passes:
            if entry.get("static") and shape:
                entry["shape"] = [int(shape[0]), int(shape[1])]
        return passes
    return [p.to_dict() for p in load_recipe(name).passes]


def _native_ok(passes: list[dict], ctx: PassContext) -> bool:
    """False for float candidates this machine would only emulate."""
    wanted = {p.get("dtype") for p in passes if p.get("pass") == "precision"} - {None, "auto", "fp32"}
    return wanted <= hardware.native_dtypes(torch.device("cpu"))


def cache_key(model: torch.nn.Module, config: FastDense) -> str:
    """Hash of the machine, torch, the model (config + weight sample), the shape and the candidates."""
    first = next(model.parameters())
    sample = first.detach().flatten()[:4096].float().sum().item()
    numel = sum(p.numel() for p in model.parameters())
    model_id = [model.config.model_type, numel, round(sample, 6)]
    blob = json.dumps([SEARCH_VERSION, machine_key(), model_id, config.batch, config.seq, config.candidates,
                       config.min_cosine,
                       config.max_ppl_change], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(key: str) -> Path:
    return cache_root() / "fast-dense" / f"{key}.json"


def measure(model: torch.nn.Module, config: FastDense, ctx: PassContext) -> dict[str, Any]:
    """Search the candidates; returns ``{"chosen": name, "passes": [...], "measured": {...}, "search_s",
    "search_cpu_s"}`` (CPU seconds of this process: the search's cost whatever else loads the machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    candidates, measured = [], {}
    shape = (config.batch, config.seq)
    for name in config.candidates:
        passes = candidate_passes(name, shape)
        streams = max((int(p.get("streams", 1)) for p in passes), default=1)
        if not _native_ok(passes, ctx):
            measured[name] = {"skipped": "precision not native on this machine"}
        elif streams > config.batch:
            measured[name] = {"skipped": f"{streams} streams need batch >= {streams}"}
        else:
            candidates.append((name, passes))
    measured.update(dense_search.search(model, candidates, ctx, batch=config.batch, seq=config.seq,
                                        runs=config.runs, budget_s=config.budget_s,
                                        fidelity_ok=lambda f: _verdict(f, config, ctx.family.kind)))
    measured = {name: measured[name] for name in config.candidates}  # the order asked for
    kept = {n: m for n, m in measured.items() if m.get("ok") and "stopped" not in m}
    if not kept:
        raise RecipeError(f"fast-dense: no candidate kept fidelity ({measured}); loosen the bounds")
    chosen = min(kept, key=lambda n: kept[n]["median_ms"])
    return {"chosen": chosen, "passes": candidate_passes(chosen, shape), "measured": measured,
            "search_s": round(time.perf_counter() - start, 3), "search_cpu_s": round(time.process_time() - cpu, 1)}


def _verdict(fidelity: dict[str, Any], config: FastDense, kind: str) -> dict[str, Any]:
    if kind == "encoder":
        cosine = fidelity.get("cosine", 0.0)
        return {"cosine": cosine, "ok": cosine >= config.min_cosine}
    change = fidelity.get("perplexity_rel_change", float("inf"))
    return {"ppl_change": change, "ok": abs(change) <= config.max_ppl_change}


def _load_decision(path: Path) -> dict[str, Any] | None:
    """A cached decision, or None when absent or corrupted (then it is measured again and rewritten)."""
    decision = read_json(path, ("chosen", "passes", "measured"))
    if decision is not None and not (isinstance(decision["passes"], list) and isinstance(decision["measured"], dict)
                                     and decision["chosen"] in decision["measured"]):
        log.warning("ignoring a corrupted fast-dense decision %s (measuring again)", path.name)
        return None
    return decision


def _describe(verdict: dict[str, Any]) -> str:
    if "skipped" in verdict:
        return verdict["skipped"]
    if not verdict.get("ok"):
        return "fidelity out of bounds"
    return f"{verdict['speedup']}x" + (" (stopped early)" if "stopped" in verdict else "")


def apply_fast_dense(model: torch.nn.Module, config: FastDense, ctx: PassContext) -> torch.nn.Module:
    if config.chosen is not None:  # a recorded decision: replay it
        return _apply_passes(model, config.chosen, ctx)
    config = dataclasses.replace(config)  # the decision is recorded in a copy: the caller's config never changes
    shape = getattr(ctx, "shape", None)  # (batch, seq) when the caller (e.g. bench) says what it will run
    if shape:
        config.batch, config.seq = int(shape[0]), int(shape[1])
    path = cache_path(cache_key(model, config))
    decision = _load_decision(path) if config.use_cache else None
    if decision is None:
        decision = measure(model, config, ctx)
        write_json_atomic(path, decision, indent=1)
        source = f"measured in {decision['search_s']:.0f} s, {decision['search_cpu_s']:.0f} CPU s"
    else:
        source = f"cached ({path.name})"
    summary = "; ".join(f"{n}: {_describe(m)}" for n, m in decision["measured"].items())
    ctx.note(f"fast-dense at batch {config.batch} x seq {config.seq} chose {decision['chosen']} [{source}]: {summary}")
    why = compile_gain_note(decision["measured"])
    if why:
        ctx.note(why)
    return _apply_passes(model, decision["passes"], ctx, config), config


def compile_gain_note(measured: dict[str, dict[str, Any]]) -> str | None:
    """Why compiling the INT8 model did not pay, when it did not."""
    plain, compiled = measured.get("int8-dynamic", {}), measured.get("int8-dynamic+compile", {})
    if "speedup" not in plain or "speedup" not in compiled or compiled["speedup"] > plain["speedup"]:
        return None
    return (f"fast-dense: int8-dynamic+compile ({compiled['speedup']}x) is not faster than int8-dynamic "
            f"({plain['speedup']}x): the INT8 engine kernels run as opaque graph nodes (no graph breaks), so "
            "Inductor can only fuse the ops between them (attention core, norms, GELU), a small share of the "
            "time here, while the compiled graph adds guard and framework overhead")


def _apply_passes(model: torch.nn.Module, passes: list[dict], ctx: PassContext,
                  record: FastDense | None = None) -> torch.nn.Module:
    configs = [PassConfig.from_dict(p) for p in passes]
    if record is not None:  # a fresh decision: the measured candidates' compiled code is no longer needed
        fresh_compile_cache(configs)
    applied = []
    for inner in configs:
        model, done = apply_pass(model, inner, ctx)
        applied.append(done)
    if record is not None:
        record.chosen = [c.to_dict() for c in applied]
    return model


def _replay(hook: str):
    def run(model: torch.nn.Module, config: FastDense, ctx: PassContext) -> torch.nn.Module:
        for entry in config.chosen or []:
            inner = PassConfig.from_dict(entry)
            fn = getattr(handler_for(inner), hook)
            if fn is not None:
                model = fn(model, inner, ctx)
        return model
    return run


register_pass(FastDense, restore=_replay("restore"), after_load=_replay("after_load"))(apply_fast_dense)
