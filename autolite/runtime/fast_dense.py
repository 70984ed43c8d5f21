"""The ``fast-dense`` pass: measure candidate dense recipes for this model on this machine, keep the fastest
whose fidelity stays in bounds, cache the decision, apply it.

Each candidate (a preset name or a list of pass dicts) is applied to a copy of the model, timed at the
requested ``batch x seq`` interleaved with the FP32 eager model (so machine drift hits both), and checked
against it (encoders: mean embedding cosine >= ``min_cosine``; decoders/seq2seq: perplexity change <=
``max_ppl_change``). The decision is cached per (machine, model, shape, candidates) under the autolite
cache dir (each candidate with the seconds it took to try, ``search_s``), and the chosen passes are recorded
in ``chosen`` so ``autolite.load`` replays them.

Candidates include the ONNX Runtime backend (``ort-fp32``, ``ort-int8``; encoders only: elsewhere it is
skipped with the reason in the notes). Dynamo is reset before each compiled candidate: the candidates are
deep copies with their own parameter objects, and guards on earlier copies' parameter ids would otherwise
pile up to dynamo's recompile limit (after which torch silently runs the rest eagerly).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from autolite.config import PassConfig, load_recipe
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.passes import PassContext, handler_for, register_pass

log = logging.getLogger(__name__)
DEFAULT_CANDIDATES = ["fp32", "int8-dynamic", "compile", "int8-dynamic+compile", "bf16-compile", "ort-fp32",
                      "ort-int8"]
COMBINED = {"int8-dynamic+compile": [{"pass": "int8-dynamic"},
                                     {"pass": "compile", "backend": "inductor", "freeze": True}]}


@dataclasses.dataclass
class FastDense(PassConfig):
    """Pick the fastest dense recipe that keeps fidelity, by measurement at ``batch x seq``.

    ``candidates``: preset names (or "int8-dynamic+compile"); BF16/FP16 ones are skipped where the CPU
    has no native support. ``use_cache``: reuse an earlier decision for the same machine/model/shape.
    ``chosen``: filled in with the applied passes (replayed on load).
    """

    name = "fast-dense"
    batch: int = 8
    seq: int = 128
    runs: int = 3
    min_cosine: float = 0.99
    max_ppl_change: float = 0.02
    candidates: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    use_cache: bool = True
    chosen: list[dict] | None = None

    def __post_init__(self) -> None:
        if self.batch < 1 or self.seq < 2 or self.runs < 1:
            raise RecipeError("fast-dense needs batch >= 1, seq >= 2 and runs >= 1")
        if not self.candidates:
            raise RecipeError("fast-dense needs at least one candidate recipe")
        for name in self.candidates:
            candidate_passes(name)  # raises RecipeError for an unknown name


def candidate_passes(name: str) -> list[dict]:
    """The pass dicts of a candidate name."""
    if name in COMBINED:
        return copy.deepcopy(COMBINED[name])
    return [p.to_dict() for p in load_recipe(name).passes]


def _native_ok(passes: list[dict], ctx: PassContext) -> bool:
    """False for float candidates this machine would only emulate."""
    from autolite.runtime.precision import native_dtypes

    wanted = {p.get("dtype") for p in passes if p.get("pass") == "precision"} - {None, "auto", "fp32"}
    return wanted <= native_dtypes(torch.device("cpu"))


def cache_key(model: torch.nn.Module, config: FastDense) -> str:
    """Hash of the machine, torch, the model (config + weight sample), the shape and the candidates."""
    from autolite.runtime.hardware import probe

    info = probe()
    machine = [info.cpu_model, info.logical_cores, sorted(k for k, v in info.isa.items() if v),
               [g.get("name") for g in info.gpus], torch.__version__, torch.get_num_threads()]
    first = next(model.parameters())
    sample = first.detach().flatten()[:4096].float().sum().item()
    numel = sum(p.numel() for p in model.parameters())
    model_id = [model.config.model_type, numel, round(sample, 6)]
    blob = json.dumps([machine, model_id, config.batch, config.seq, config.candidates, config.min_cosine,
                       config.max_ppl_change], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(key: str) -> Path:
    from autolite.loading import cache_root

    return cache_root() / "fast-dense" / f"{key}.json"


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def measure(model: torch.nn.Module, config: FastDense, ctx: PassContext) -> dict[str, Any]:
    """Time and check every candidate; returns ``{"chosen": name, "passes": [...], "measured": {...}}``."""
    from autolite.eval.compare import compare

    measured: dict[str, dict[str, Any]] = {}
    texts = list(ctx.calib or [])[:32] or None
    for name in config.candidates:
        passes = candidate_passes(name)
        if not _native_ok(passes, ctx):
            measured[name] = {"skipped": "precision not native on this machine"}
            continue
        start = time.perf_counter()
        candidate = _build(model, passes, ctx)
        if isinstance(candidate, str):
            measured[name] = {"skipped": candidate}
            continue
        result = compare(model, candidate, ctx.tokenizer, ctx.family, batch=config.batch, seq=config.seq,
                         runs=config.runs, warmup=1, data=texts, fidelity_texts=32)
        measured[name] = _verdict(result, config, ctx.family.kind)
        measured[name]["search_s"] = round(time.perf_counter() - start, 3)  # build + compile + timing + fidelity
        log.info("fast-dense candidate %s: %s", name, measured[name])
    kept = {n: m for n, m in measured.items() if m.get("ok")}
    if not kept:
        raise RecipeError(f"fast-dense: no candidate kept fidelity ({measured}); loosen the bounds")
    chosen = max(kept, key=lambda n: kept[n]["speedup"])
    return {"chosen": chosen, "passes": candidate_passes(chosen), "measured": measured}


def _build(model: torch.nn.Module, passes: list[dict], ctx: PassContext) -> torch.nn.Module | str:
    """The candidate applied to a copy of ``model``, or why this machine/model cannot run it."""
    from autolite.passes import compress, import_builtin_passes

    import_builtin_passes()
    inner = PassContext(family=ctx.family, tokenizer=ctx.tokenizer, calib=ctx.calib, labels=ctx.labels)
    configs = [PassConfig.from_dict(p) for p in passes]
    fresh_compile_cache(configs)
    try:
        return compress(copy.deepcopy(model), configs, tokenizer=ctx.tokenizer, family=ctx.family, ctx=inner)
    except BackendUnavailableError as exc:
        return f"unavailable: {exc}"


def fresh_compile_cache(configs: list[PassConfig]) -> None:
    """Reset dynamo before compiling a candidate: each candidate is a deep copy with its own parameter
    objects, and guards on the previous copies' parameter ids would otherwise pile up to the recompile limit."""
    if any(c.name == "compile" for c in configs):
        torch._dynamo.reset()


def _verdict(result: dict[str, Any], config: FastDense, kind: str) -> dict[str, Any]:
    fidelity = result["fidelity"]
    verdict = {"speedup": round(result["speedup"], 3), "median_ms": round(result["candidate"]["median_ms"], 2),
               "baseline_ms": round(result["baseline"]["median_ms"], 2)}
    if kind == "encoder":
        verdict["cosine"] = fidelity.get("cosine", 0.0)
        verdict["ok"] = verdict["cosine"] >= config.min_cosine
    else:
        verdict["ppl_change"] = fidelity.get("perplexity_rel_change", float("inf"))
        verdict["ok"] = abs(verdict["ppl_change"]) <= config.max_ppl_change
    return verdict


def apply_fast_dense(model: torch.nn.Module, config: FastDense, ctx: PassContext) -> torch.nn.Module:
    if config.chosen is not None:  # a recorded decision: replay it
        return _apply_passes(model, config.chosen, ctx)
    shape = getattr(ctx, "shape", None)  # (batch, seq) when the caller (e.g. bench) says what it will run
    if shape:
        config.batch, config.seq = int(shape[0]), int(shape[1])
    path = cache_path(cache_key(model, config))
    decision = json.loads(path.read_text()) if config.use_cache and path.is_file() else None
    if decision is None:
        decision = measure(model, config, ctx)
        _write_json_atomic(path, decision)
        source = "measured"
    else:
        source = f"cached ({path.name})"
    summary = "; ".join(f"{n}: " + (f"{m['speedup']}x" + ("" if m["ok"] else " (fidelity out of bounds)")
                                     if "speedup" in m else m["skipped"]) for n, m in decision["measured"].items())
    ctx.note(f"fast-dense at batch {config.batch} x seq {config.seq} chose {decision['chosen']} [{source}]: {summary}")
    why = compile_gain_note(decision["measured"])
    if why:
        ctx.note(why)
    return _apply_passes(model, decision["passes"], ctx, config)


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
    for inner in configs:
        model = handler_for(inner).apply(model, inner, ctx)
    if record is not None:
        record.chosen = [c.to_dict() for c in configs]
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
