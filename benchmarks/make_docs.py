"""Render the docs' speed tables from the benchmark JSON, so no speed number is typed by hand.

    python benchmarks/make_docs.py      # docs/PEERS.md from benchmarks/results/peers/,
                                        # docs/BENCHMARKS.md from benchmarks/results/ (run_all.render)

``render_peers`` is also what benchmarks/peers.py calls after a run; the README's peer rows come from the same
JSON through benchmarks/readme_numbers.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import run_all  # benchmarks/run_all.py, beside this script: renders docs/BENCHMARKS.md

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "peers"
TARGETS = {32: 1.3, 1: 1.2}  # fast-dense / best peer wanted at batch 32 and batch 1 (issue 18)
FLOOR_SHARE = 0.85  # ... or this share of the INT8 dense floor


def _machine(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    isa = ", ".join(k for k, v in sorted(m.get("isa", {}).items()) if v and k in
                    ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx2"))
    return f"{m.get('cpu_model', '?')}, {data.get('threads', '?')} threads ({isa or 'ISA unknown'})"


def best_peer(rows: dict[str, dict]) -> tuple[str, dict] | None:
    """The timed peer (not autolite's) with the highest speedup over FP32 eager in one run. Speedups, not
    milliseconds, compare rows: a large model's contenders may be timed in groups, each with its own eager."""
    timed = [(n, r) for n, r in rows.items() if r.get("side") == "peer" and "speedup" in r]
    return max(timed, key=lambda item: item[1]["speedup"]) if timed else None


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def run_table(data: dict[str, Any]) -> list[str]:
    """One (model, shape) run as a markdown table plus the verdict lines."""
    title = f"### {data['model']}, batch {data['batch']} x seq {data['seq']}"
    if "skipped" in data:
        return [title, "", f"Not run: {data['skipped']}.", ""]
    rows, best = data["rows"], best_peer(data["rows"])
    load = data.get("load", {})
    lines = [title, "", f"Machine: {_machine(data)}; {data['runs']} interleaved rounds; load average "
             f"{load.get('loadavg_1min_before', '?')} -> {load.get('loadavg_1min_after', '?')} (1 min), CPU steal "
             f"{_fmt(load.get('cpu_steal_share'), '.1%')}. {data['timestamp']}. `{data['command']}`", "",
             "| contender | tool | ms / batch | vs FP32 eager | vs best peer | % of INT8 dense floor | cosine vs FP32 | "
             "memory held (MiB) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    floor = data.get("floor", {}).get("int8_floor_ms")
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"| {name} | {row['tool']} | skipped: {row['skipped']} | | | | | |")
            continue
        vs_best = best and row["speedup"] / best[1]["speedup"]
        share = floor / row["median_ms"] if floor and row["median_ms"] else None
        bold = "**" if name == (best and best[0]) or row["side"] == "ours" and name.endswith("fast-dense") else ""
        lines.append(f"| {bold}{name}{bold} | {row['tool']} | {row['median_ms']:.1f} | {row['speedup']:.2f}x | "
                     f"{_fmt(vs_best, '.2f', 'x')} | {_fmt(share, '.0%')} | {_fmt(row.get('cosine'), '.4f')} | "
                     f"{_fmt(row.get('held_mb'), '.0f')} |")
    busy = max(load.get("loadavg_1min_before", 0), load.get("loadavg_1min_after", 0))
    if busy > 2 * data.get("threads", 1):
        lines += ["", f"**Shared machine**: load average {busy} on {data.get('threads')} threads during this run. "
                  "Multi-threaded PyTorch kernels wait at their thread barriers whenever one of their threads is "
                  "descheduled, so the torch rows (FP32 eager included, hence every 'vs FP32 eager' ratio) are "
                  "inflated far more than the engines'; compare the rows with each other, and rerun on a quiet "
                  "machine for absolute numbers."]
    if data.get("groups", 1) > 1:
        lines += ["", f"Timed in {data['groups']} groups (the contenders of this model do not all fit in memory at "
                  "once): each group round-robin with its own FP32 eager; 'vs FP32 eager' is over that eager, "
                  "'vs best peer' the ratio of speedups. Groups: " + "; ".join(
                      f"{n} in {r['group']} (eager {r['group_eager_ms']:.1f} ms)" for n, r in rows.items()
                      if r.get("group") is not None) + "."]
    return lines + [""] + verdict(data, best) + [""]


def verdict(data: dict[str, Any], best: tuple[str, dict] | None) -> list[str]:
    """fast-dense against the target (ratio to the best peer, or the share of the INT8 dense floor)."""
    fast = data["rows"].get("autolite fast-dense", {})
    if "median_ms" not in fast or best is None:
        return ["fast-dense or the peers were not timed in this run."]
    ratio = fast["speedup"] / best[1]["speedup"]
    want = TARGETS.get(data["batch"], 1.2)
    floor = data.get("floor", {}).get("int8_floor_ms")
    share = floor / fast["median_ms"] if floor else None
    met = ratio >= want or (share or 0) >= FLOOR_SHARE
    lines = [f"fast-dense: {ratio:.2f}x the best peer ({best[0]}); target {want}x, or {FLOOR_SHARE:.0%} of the "
             f"INT8 dense floor ({_fmt(floor, '.0f', ' ms')} at the measured INT8 GEMM peak: fast-dense runs at "
             f"{_fmt(share, '.0%')} of it) -- **{'met' if met else 'not met'}**."]
    if fast.get("note"):
        lines.append(f"Its search: {fast['note']}")
    return lines


def render_peers(paths: list[Path]) -> str:
    """docs/PEERS.md from the peers JSON files."""
    lines = ["# autolite against the peers", "",
             "Generated by `python benchmarks/peers.py` (or `python benchmarks/make_docs.py` from the saved JSON in",
             "benchmarks/results/peers/); do not edit by hand. Every contender is timed in the same process,",
             "round-robin with PyTorch FP32 eager on the same token batch; medians after warm-up. Random-weight",
             "models (`random:*`) have the real architectures and shapes. Cosine: mean-pooled embeddings against",
             "FP32 on held-out corpus texts. Memory held: the weights the model keeps in RAM (for ONNX Runtime and",
             "OpenVINO: what the engine holds; the torch weights are memory-mapped from disk). Peers not installed",
             "are skipped with a note. Install them with `pip install 'autolite[peers]'`. A model whose",
             "contenders do not all fit in memory at once is timed in groups, each with its own FP32 eager (said",
             "under its table); rows are compared by their speedup over FP32 eager. Each timed call follows a",
             "30 ms pause, so the previous engine's idle threads (PyTorch's OpenMP workers spin-wait for ms) do",
             "not slow the next one. The OpenVINO peers run the model as read from ONNX, with dynamic shapes;",
             "fast-dense may compile it for the exact batch x seq (`openvino-int8-static`), which on a small",
             "model at batch 1 saves OpenVINO's per-call dynamic-shape work: an OpenVINO user who fixes the",
             "shape gets the same.", ""]
    for path in paths:
        lines += run_table(json.loads(path.read_text()))
    return "\n".join(lines)


def main() -> None:
    paths = sorted(RESULTS.glob("*.json"))
    (ROOT / "docs" / "PEERS.md").write_text(render_peers(paths))
    print("wrote docs/PEERS.md")
    run_all.render()


if __name__ == "__main__":
    main()
