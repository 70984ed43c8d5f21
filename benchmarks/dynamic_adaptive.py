"""Batched early exit, fast/main path routing and runtime head selection on the fortunes task.

Used by ``benchmarks/dynamic_bench.py`` (its registry entries ``early-exit``, ``route``, ``head-select`` build
their models here; ``after`` adds measurements its fixed-shape table cannot show; ``doc_sections`` renders
them into docs/DYNAMIC.md). Calibration: the train split fits (exit heads, the fast path's recovery, head
scores) and the val split is held out (thresholds); the test split is only measured.

The extra measurements run on the test texts as they come (file order, batches of 32 padded to their longest
text, max 128 tokens), the case early exit and length routing are for; every timing is the project's
interleaved harness (models alternating A B C in one process, medians after warm-up). JSON:
``benchmarks/results/dynamic/adaptive/<technique>.json``.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import autolite
from autolite.dynamic.calib import text_batches
from autolite.dynamic.early_exit import EarlyExit
from autolite.dynamic.head_select import HeadSelect, HeadSelectAttention
from autolite.dynamic.router import PATHS, Route, time_over_batches
from autolite.passes import PassContext
from autolite.prune import PruneHeads

log = logging.getLogger("dynamic_adaptive")
RESULTS = Path(__file__).resolve().parent / "results" / "dynamic" / "adaptive"
MAX_LENGTH = 128
EXIT_BUDGETS = (0.5,)  # accuracy points on val
FAST_PRUNED = [{"pass": "prune-ffn", "ratio": 0.5, "recover_steps": 100},
               {"pass": "prune-heads", "ratio": 0.5, "recover_steps": 100}, {"pass": "int8-dynamic"}]
ROUTES = {"cascade, fast = int8": dict(fast="int8-dynamic"),
          "cascade, fast = pruned+int8": dict(fast=FAST_PRUNED),
          "length <= 48 tokens to int8, longer to FP32": dict(fast="int8-dynamic", max_tokens=48, cascade=False)}
COMBINED_MAX_TOKENS = 48  # the two-bucket split that minimises padded tokens in val batches of 32 (val: 1.94x)
_BUILT: dict[str, dict[str, Any]] = {}  # technique -> {row name: (model, settings)}, reused by ``after``


def calib_ctx(task: Any) -> tuple[PassContext, float]:
    """Calibration = train (fit) + val (held-out), and the held-out fraction that splits them there."""
    ctx = PassContext(family=task.family, tokenizer=task.tokenizer, calib=task.train.texts + task.val.texts,
                      labels=list(task.train.labels) + list(task.val.labels))
    return ctx, len(task.val) / (len(task.train) + len(task.val))


def early_exit_models(task: Any) -> dict[str, tuple[torch.nn.Module, dict]]:
    """One early-exit model per accuracy budget (exits on the embeddings and after layers 0-4, threshold calibrated on val)."""
    built = {}
    for max_drop in EXIT_BUDGETS:
        ctx, holdout = calib_ctx(task)
        config = EarlyExit(layers=[-1, 0, 1, 2, 3, 4], max_drop=max_drop, holdout=holdout)
        start = time.time()
        model = autolite.compress(copy.deepcopy(task.model), [config], ctx=ctx)
        built[f"early-exit (val budget {max_drop} pt)"] = (model, {
            "recipe": config.to_dict(), "threshold": round(float(model.bert.encoder.exit_threshold), 4),
            "build_s": round(time.time() - start, 1), "notes": ctx.notes})
    _BUILT["early-exit"] = built
    return built


def route_units(task: Any) -> dict[str, tuple[torch.nn.Module, dict]]:
    """One routed unit (fast path + the FP32 model) per entry of ``ROUTES``, tau calibrated on val to 1 point."""
    built = {}
    for name, options in ROUTES.items():
        ctx, holdout = calib_ctx(task)
        config = Route(max_drop=1.0, holdout=holdout, **options)
        start = time.time()
        unit = autolite.compress(copy.deepcopy(task.model), [config], ctx=ctx)
        built[f"route: {name}"] = (unit, {"recipe": config.to_dict(), "tau": round(unit.tau, 4),
                                          "build_s": round(time.time() - start, 1), "notes": ctx.notes})
    _BUILT["route"] = built
    return built


def combined_units(task: Any) -> dict[str, tuple[torch.nn.Module, dict]]:
    """Early exit + INT8, alone and routed by length: rows of <= COMBINED_MAX_TOKENS real tokens take one copy,
    longer ones the other, each run trimmed to its own rows' length (so short rows stop paying for long ones)."""
    exit_model, exit_settings = next(iter((_BUILT.get("early-exit") or early_exit_models(task)).values()))
    quantized = autolite.compress(copy.deepcopy(exit_model), "int8-dynamic")
    keep = tempfile.TemporaryDirectory()  # the fast copy's files, alive as long as the unit (kept in _BUILT)
    autolite.save_model(quantized, task.tokenizer, Path(keep.name) / "fast")
    ctx, holdout = calib_ctx(task)
    config = Route(fast=str(Path(keep.name) / "fast"), max_tokens=COMBINED_MAX_TOKENS, cascade=False, holdout=holdout)
    unit = autolite.compress(copy.deepcopy(quantized), [config], ctx=ctx)
    settings = {"early_exit": exit_settings["recipe"], "threshold": exit_settings["threshold"], "int8": "int8-dynamic"}
    built = {"early exit + int8": (quantized, settings),
             f"early exit + int8 + route by length (<= {COMBINED_MAX_TOKENS} tokens)": (unit, dict(
                 settings, route={"max_tokens": COMBINED_MAX_TOKENS, "cascade": False,
                                  "paths": "both INT8 early-exit copies"}))}
    _BUILT["combined"] = dict(built, _files=keep)
    return built


def head_select_models(task: Any) -> dict[str, tuple[torch.nn.Module, dict]]:
    """Runtime head selection (k calibrated on train to 0.99 agreement) and static prune-heads keeping k."""
    ctx = PassContext(family=task.family, tokenizer=task.tokenizer, calib=task.train.texts, labels=task.train.labels)
    dynamic = autolite.compress(copy.deepcopy(task.model), [HeadSelect(min_fidelity=0.99)], ctx=ctx)
    k = int(next(m for m in dynamic.modules() if isinstance(m, HeadSelectAttention)).keep)
    heads = task.model.config.num_attention_heads
    static_ctx = PassContext(family=task.family, tokenizer=task.tokenizer, calib=task.train.texts,
                             labels=task.train.labels)
    config = PruneHeads(ratio=(heads - k) / heads)
    static = autolite.compress(copy.deepcopy(task.model), [config], ctx=static_ctx) if k < heads \
        else copy.deepcopy(task.model)
    built = {f"head-select (top {k} of {heads} heads per batch)": (dynamic, {"heads_kept": k, "notes": ctx.notes}),
             f"prune-heads (static, {k} of {heads} heads)": (static, {"recipe": config.to_dict(),
                                                                       "notes": static_ctx.notes})}
    _BUILT["head-select"] = built
    return built


@torch.no_grad()
def accuracy(model: torch.nn.Module, task: Any) -> float:
    preds = [model(**inputs).logits.argmax(-1) for inputs in text_batches(task.tokenizer, task.test.texts, 32,
                                                                          MAX_LENGTH)]
    return float((torch.cat(preds) == torch.tensor(task.test.labels)).float().mean())


def timed(models: dict[str, torch.nn.Module], task: Any, batch: int, count: int, runs: int) -> dict[str, float]:
    """Median ms per batch of each model over the first ``count`` test texts (each batch once per run)."""
    ms = time_over_batches(models, task.tokenizer, task.test.texts[:count], batch, runs, MAX_LENGTH)
    return {name: round(value, 3) for name, value in ms.items()}


@torch.no_grad()
def mean_layers(model: torch.nn.Module, task: Any) -> float:
    """Mean number of layers the test texts ran through (batches of 32)."""
    encoder, run = model.bert.encoder, []
    for inputs in text_batches(task.tokenizer, task.test.texts, 32, MAX_LENGTH):
        model(**inputs)
        run.append(encoder.last_exit_layers + 1)
    return round(float(torch.cat(run).float().mean()), 3)


def _natural(name: str, task: Any, runs: int) -> dict[str, Any]:
    """Per row: test accuracy, and ms per batch at b32 (all test texts) and b1 (the first 48) vs FP32."""
    built = {k: v for k, v in (_BUILT.get(name) or {}).items() if not k.startswith("_")}
    fp32_acc = accuracy(task.model, task)
    rows = []
    for row_name, (model, settings) in built.items():
        ms = {f"b{b}": timed({"fp32": task.model, "dynamic": model}, task, b, n, runs if b > 1 else max(3, runs // 2))
              for b, n in ((32, len(task.test)), (1, 48))}
        row = {"name": row_name, "settings": settings, "ms_per_batch": ms,
               "speedup": {b: round(v["fp32"] / v["dynamic"], 3) for b, v in ms.items()},
               "test_accuracy": accuracy(model, task), "fp32_test_accuracy": fp32_acc}
        row["drop_points"] = round(100 * (fp32_acc - row["test_accuracy"]), 2)
        if name == "early-exit":
            row["mean_layers_run"] = mean_layers(model, task)
        if name in ("route", "combined") and hasattr(model, "path_report"):
            row["routes"] = model.path_report(task.tokenizer, task.test.texts, task.test.labels, batch=32, runs=runs)
            row["fast_path_test_accuracy"] = accuracy(model.fast, task) if name == "route" else None
        rows.append(row)
    return {"technique": name, "rows": rows}


def after(name: str, task: Any, runs: int) -> None:
    """dynamic_bench hook: the natural-length measurements of ``name`` (a no-op for other techniques)."""
    if name not in ("early-exit", "route", "head-select", "combined") or name not in _BUILT:
        return
    load = round(os.getloadavg()[0], 2)
    start = time.time()
    result = _natural(name, task, runs)
    result.update(runs=runs, seconds=round(time.time() - start, 1), load_average_1m=[load, round(os.getloadavg()[0], 2)],
                  command=f"python benchmarks/dynamic_bench.py --only {name}",
                  timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS / f"{name}.json")


def doc_sections(directory: Path = RESULTS) -> list[str]:
    """Markdown sections for docs/DYNAMIC.md from the JSON ``after`` wrote (nothing when absent)."""
    lines: list[str] = []
    for name, render in (("early-exit", _exit_lines), ("route", _route_lines), ("combined", _combined_lines),
                         ("head-select", _head_lines)):
        path = directory / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            lines += render(result) + ["", f"({result['runs']} interleaved runs, {result['seconds']} s, load average "
                                          f"before/after {result['load_average_1m']} on 2 shared cores: "
                                          f"`{result['command']}`)", ""]
    return lines


def _speed_cells(row: dict[str, Any]) -> str:
    ms32, ms1 = row["ms_per_batch"]["b32"], row["ms_per_batch"]["b1"]
    return (f"{ms32['fp32']:.1f} -> {ms32['dynamic']:.1f} ms ({row['speedup']['b32']:.2f}x) | "
            f"{ms1['fp32']:.1f} -> {ms1['dynamic']:.1f} ms ({row['speedup']['b1']:.2f}x)")


def _exit_lines(result: dict[str, Any]) -> list[str]:
    lines = ["## Batched early exit on the test texts as they come", "",
             "Exited rows leave the batch (later layers run on the rest). Batches of 32 (all test texts) and 1 "
             "(the first 48), padded to their longest text; FP32 eager without exits is the baseline.", "",
             "| row | threshold | mean layers run (of 6) | b32 | b1 | test accuracy (FP32 -> row) | drop | "
             "target >= 1.5x at b32, <= 1 pt |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        met = row["speedup"]["b32"] >= 1.5 and row["drop_points"] <= 1.0
        lines.append(f"| {row['name']} | {row['settings']['threshold']} | {row['mean_layers_run']:.2f} | "
                     f"{_speed_cells(row)} | {100 * row['fp32_test_accuracy']:.1f} -> {100 * row['test_accuracy']:.1f}"
                     f" | {row['drop_points']:.2f} pt | {'yes' if met else '**no**'} |")
    return lines


def _route_lines(result: dict[str, Any]) -> list[str]:
    lines = ["## Fast/main path routing: route shares, per-path latency and accuracy", "",
             "Each unit holds a fast path and the FP32 model; tau calibrated on val to lose <= 1 point. Per path: "
             "share of the test texts and accuracy on them (escalated: fast path first, then the main model). "
             "Latency: mean ms per batch of 32 over the test texts, the routed unit vs each path run alone on all "
             "of them, interleaved.", "",
             "| unit | tau | fast / escalated / main share | accuracy on fast / escalated / main rows | "
             "ms/batch: main alone, fast alone, routed | speed-up vs main | test accuracy (FP32 -> routed) | "
             "target >= 1.5x, <= 1 pt |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        report, paths = row["routes"], row["routes"]["paths"]
        shares = " / ".join(f"{100 * paths[p]['share']:.0f}%" for p in PATHS)
        accs = " / ".join(f"{100 * paths[p]['accuracy']:.1f}" if "accuracy" in paths[p] else "-" for p in PATHS)
        ms = report["ms_per_batch"]
        lines.append(f"| {row['name']} | {report['tau']:.3f} | {shares} | {accs} | {ms['main']:.1f}, {ms['fast']:.1f}, "
                     f"{ms['routed']:.1f} | {report['speedup_vs_main']:.2f}x | {100 * row['fp32_test_accuracy']:.1f} "
                     f"-> {100 * report['accuracy']:.1f} ({row['drop_points']:.2f} pt; fast path alone "
                     f"{100 * row['fast_path_test_accuracy']:.1f}) | "
                     f"{'yes' if report['speedup_vs_main'] >= 1.5 and row['drop_points'] <= 1.0 else '**no**'} |")
    return lines


def _combined_lines(result: dict[str, Any]) -> list[str]:
    lines = ["## Combined: early exit + INT8 + routing by length, on the test texts as they come", "",
             "Batches of 32 (all test texts) and 1 (the first 48) padded to their longest text; FP32 eager without "
             "any of it is the baseline. Routed: rows of at most the given length run on one copy, the rest on the "
             "other, each trimmed to its own rows' longest text (both copies early exit + INT8 dynamic).", "",
             "| row | b32 | b1 | test accuracy (FP32 -> row) | drop | route shares (short / long) | "
             "target >= 8x at b32, <= 1 pt |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        paths = row.get("routes", {}).get("paths")
        shares = f"{100 * paths['fast']['share']:.0f}% / {100 * paths['main']['share']:.0f}%" if paths else "-"
        met = row["speedup"]["b32"] >= 8.0 and row["drop_points"] <= 1.0
        lines.append(f"| {row['name']} | {_speed_cells(row)} | {100 * row['fp32_test_accuracy']:.1f} -> "
                     f"{100 * row['test_accuracy']:.1f} | {row['drop_points']:.2f} pt | {shares} | "
                     f"{'yes' if met else '**no**'} |")
    return lines


def _head_lines(result: dict[str, Any]) -> list[str]:
    lines = ["## Runtime head selection vs static head pruning", "",
             "Same number of heads kept per layer; runtime selection picks them per batch from the layer input, "
             "static pruning removes the same count once (Taylor scores on train). FP32 eager is the baseline.", "",
             "| row | b32 | b1 | test accuracy (FP32 -> row) | drop |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['name']} | {_speed_cells(row)} | {100 * row['fp32_test_accuracy']:.1f} -> "
                     f"{100 * row['test_accuracy']:.1f} | {row['drop_points']:.2f} pt |")
    dyn, static = result["rows"][0], result["rows"][1]
    wins = all(dyn["speedup"][b] > static["speedup"][b] for b in ("b32", "b1"))
    lines += ["", "Runtime selection " + ("is faster than static pruning at both batch sizes here." if wins else
              "does **not** beat static head pruning on wall-clock here (it pays the per-batch score and weight "
              "slicing that static pruning paid once), so no default recipe uses it.")]
    return lines
