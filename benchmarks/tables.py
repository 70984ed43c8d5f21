"""The original's tables, rendered from benchmark JSON (no number typed by hand).

Each function takes loaded JSON and returns markdown lines; benchmarks/run_all.py puts them at the top of
docs/BENCHMARKS.md. Sources: the `run_all.py` cases (``autolite bench`` JSON in benchmarks/results/), the
fortunes task search (benchmarks/results/optimize/fortunes.json), the dynamic-inference runs
(benchmarks/results/dynamic/) and the serving run (benchmarks/results/serve/serve_batching.json).
"""
from __future__ import annotations

import re
from typing import Any

E2E_TARGET = 8.0  # issue 18: pruning + the engine >= 8x FP32 eager on each seed model
# precision label -> run_all case (the FP32 row is that model's FP32 eager baseline)
PRECISION_CASES = {"BF16": "minilm-bf16-b32", "FP16": "minilm-fp16-b32", "INT8 (dynamic, torch)":
                   "minilm-int8-dynamic-b32", "INT8 (engine: fast-dense)": "minilm-fast-dense-b32",
                   "INT4 (weight-only w4g64, GPTQ)": "minilm-w4g64-b32"}


def fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def machine_name(machine: dict[str, Any] | None, threads: Any = None) -> str:
    """``AMD EPYC, 2 cores (avx512f, avx512_vnni, avx512_bf16)``: what a reader needs to place a number."""
    if not machine:
        return "machine not recorded"
    isa = [k for k in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
           if machine.get("isa", {}).get(k)]
    cores = f"{threads} threads" if threads else f"{machine.get('usable_cores', '?')} cores"
    return f"{machine.get('cpu_model', '?')}, {cores} ({', '.join(isa) or 'no AVX-512/AMX'})"


def load_text(data: dict[str, Any]) -> str:
    """The 1-minute load average at the start and end of a case (it counts other people's nice-19 jobs too)."""
    load = data.get("load") or {}
    if not load:
        return "load not recorded"
    return f"load {load.get('before', '?')} -> {load.get('after', '?')}"


def engine_choice(notes: list[str]) -> str:
    """What the engine ran: fast-dense's pick, or the backend pass's own line."""
    for note in notes:
        match = re.search(r"fast-dense at batch \d+ x seq \d+ chose (\S+)", note)
        if match:
            return f"fast-dense -> {match.group(1)}"
    for note in notes:
        match = re.match(r"(onnxruntime|openvino) (\S+): forward runs in ([A-Za-z ]+?\d[\d.]*)", note)
        if match:
            return f"{match.group(3)} {match.group(2).upper()}"
    return "torch"


def structure(notes: list[str]) -> str:
    """``layers 12->6, heads 12->6, FFN 3072->768`` from the prune passes' notes."""
    parts = []
    for note in notes:
        layers = re.search(r"prune-layers: removed (\d+) of (\d+) layers", note)
        heads = re.search(r"prune-heads: removed (\d+) of (\d+) heads .*per layer now (\d+)", note)
        ffn = re.search(r"prune-ffn: removed (\d+) of (\d+) FFN neurons .*per layer now (\d+)", note)
        if layers:
            parts.append(f"layers {layers.group(2)}->{int(layers.group(2)) - int(layers.group(1))}")
        if heads:
            total, per_layer = int(heads.group(2)), int(heads.group(3))
            parts.append(f"heads {total * per_layer // (total - int(heads.group(1)))}->{per_layer} per layer")
        if ffn:
            left = int(ffn.group(2)) - int(ffn.group(1))
            per_layer = int(ffn.group(3))
            parts.append(f"FFN {int(ffn.group(2)) * per_layer // left}->{per_layer}")
    return ", ".join(parts) or "-"


def e2e_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The seed models' end-to-end rows: pruning + the engine against FP32 eager of the unpruned model."""
    rows = {name: data for name, data in results.items() if name.startswith("e2e-")}
    lines = ["## End to end: pruning + the engine vs FP32 eager", "",
             f"Target (issue 18): >= {E2E_TARGET:g}x FP32 eager on each seed model. Each row is one run: the "
             "unpruned model in FP32 eager PyTorch and the recipe's model timed interleaved in one process on "
             "the same tokens (medians after warm-up), at normal priority under the benchmark lock; the load "
             "average also counts other work at the lowest priority (nice 19). Random weights with the real shapes, so **the cosine is "
             "fidelity to the unpruned FP32 model, not accuracy**: pruning random weights says nothing about "
             "task accuracy. For what pruning costs on a trained task see the technique table below, "
             "docs/OPTIMIZE.md and docs/DYNAMIC.md (MiniLM fine-tuned on the fortunes task).", ""]
    if not rows:
        return lines + ["Not run yet: `python benchmarks/run_all.py --only e2e-`.", ""]
    lines += ["| model | recipe | batch x seq | structure kept | engine | FP32 eager ms | recipe ms | speed-up | "
              "target | cosine vs FP32 | weights MB | machine, load |",
              "|---|---|---|---|---|---:|---:|---:|---|---:|---|---|"]
    for data in rows.values():
        speed = data["speedup"]
        met = "met" if speed >= E2E_TARGET else "**not met**"
        lines.append(
            f"| {data['model']} | `{data['recipe']['name']}` | {data['batch']}x{data['seq']} | "
            f"{structure(data['notes'])} | {engine_choice(data['notes'])} | {data['baseline']['median_ms']:.1f} | "
            f"{data['candidate']['median_ms']:.1f} | **{speed:.2f}x** | {met} | "
            f"{fmt(data['fidelity'].get('cosine'), '.4f')} | {data['baseline']['size_mb']:.0f} -> "
            f"{data['candidate']['size_mb']:.0f} | {machine_name(data['machine'], data['threads'])}; "
            f"{load_text(data)} |")
    return lines + [""]


def precision_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """FP32 / BF16 / FP16 / INT8 / INT4 on one encoder: speed, weights, fidelity (each row its own run)."""
    lines = ["## Precision: FP32 / BF16 / FP16 / INT8 / INT4", "",
             "MiniLM (all-MiniLM-L6-v2, real weights), batch 32 x 128 tokens. Each row is its own `autolite "
             "bench` run (FP32 eager and the precision interleaved); accuracy loss = 1 - cosine of mean-pooled "
             "embeddings against FP32 on the held-out corpus texts. A precision the CPU lacks natively falls "
             "back or is emulated, and the notes say which. Decoder precisions (perplexity, INT4 decode "
             "speed): docs/PRECISION.md.", "",
             "| precision | FP32 eager ms | ms | speed-up | weights MB | 1 - cosine | notes | machine, load |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    found = [(label, results[case]) for label, case in PRECISION_CASES.items() if case in results]
    if not found:
        return lines[:-2] + ["Not run yet: `python benchmarks/run_all.py --only minilm-`.", ""]
    first = found[0][1]
    lines.append(f"| FP32 (eager) | {first['baseline']['median_ms']:.1f} | {first['baseline']['median_ms']:.1f} | "
                 f"1.00x | {first['baseline']['size_mb']:.0f} | 0 | the reference | "
                 f"{machine_name(first['machine'], first['threads'])} |")
    for label, data in found:
        cosine = data["fidelity"].get("cosine")
        note = next((n for n in data["notes"] if "not native" in n or "emulat" in n), "")
        lines.append(f"| {label} | {data['baseline']['median_ms']:.1f} | {data['candidate']['median_ms']:.1f} | "
                     f"{data['speedup']:.2f}x | {data['candidate']['size_mb']:.0f} | "
                     f"{fmt(None if cosine is None else 1 - cosine, '.5f')} | {note[:120] or '-'} | "
                     f"{machine_name(data['machine'], data['threads'])}; {load_text(data)} |")
    return lines + [""]


def _technique(params: dict[str, Any]) -> str:
    dynamic = [k.split(":")[1] for k, v in params.items() if k.startswith("dyn:") and k.count(":") == 1 and v]
    pruned = any(params.get(k) for k in ("layers", "heads", "ffn"))
    if dynamic:
        return "dynamic (" + ", ".join(dynamic) + ")" + (" + pruning" if pruned else "")
    return "pruning + distillation" if pruned else "quantization / engine"


def technique_table(search: dict[str, Any] | None, dynamic: dict[str, dict[str, Any]]) -> list[str]:
    """Pruning / quantization / distillation / dynamic on one trained task (MiniLM fine-tuned on fortunes)."""
    lines = ["## Techniques compared on a trained task", ""]
    if search is None:
        return lines + ["Not run yet: `python benchmarks/optimize_bench.py` (the fortunes task search).", ""]
    opt = search["optimize"]
    lines += [f"MiniLM fine-tuned on the fortunes task ({len(search['task']['categories'])} categories), batch "
              f"{search['batch']} x {search['seq']}, every trial of one `autolite optimize` search "
              f"(`{search['command']}`, {search['timestamp']}). Speed-up: against FP32 eager timed in the same "
              "trial. Accuracy: the validation split (the search ranks on it; no trial trains on it), FP32 "
              f"{opt['fp32']['val_acc']:.2f}%. Pruned trials are recovered by distillation from the unpruned "
              f"model ({opt['space']['recover_steps']} steps). Energy is "
              f"{opt['pick']['energy']['source']} ({opt['pick']['energy']['note']}). Machine: "
              f"{machine_name(search['machine'])}; load average {search['load_average']['start'][0]:.1f} -> "
              f"{search['load_average']['end'][0]:.1f}.", "",
              "| technique | trial | speed-up vs FP32 eager | val accuracy (points vs FP32) | weights MB | J / inference |",
              "|---|---|---:|---|---:|---:|"]
    for trial in opt["trials"]:
        if trial["state"] != "complete":
            continue
        drop = trial["val_acc"] - opt["fp32"]["val_acc"]
        lines.append(f"| {_technique(trial['params'])} | {trial['label']} | {trial['speedup']:.2f}x | "
                     f"{trial['val_acc']:.2f} ({drop:+.2f}) | {trial['size_mb']:.0f} | {fmt(trial.get('joules'), '.3f')} |")
    pick = opt["pick"]
    lines += ["", f"The search's pick within {opt['max_drop']:g} point: {pick['label']} {pick['speedup']:.2f}x, test "
              f"accuracy {pick['test_acc']:.2f}% vs FP32 {opt['fp32']['test_acc']:.2f}% (the test split is read "
              "once, for the pick). Trials the search stopped early or that failed are in the JSON, not here.", ""]
    return lines + dynamic_rows(dynamic)


def dynamic_rows(dynamic: dict[str, dict[str, Any]]) -> list[str]:
    """Dynamic inference on the same task (benchmarks/dynamic_bench.py), test accuracy."""
    if not dynamic:
        return []
    lines = ["Dynamic inference on the same task (`benchmarks/dynamic_bench.py`, test split, FP32 eager in the "
             "same run; 1 thread):", "",
             "| run | row | speed-up b32x128 | speed-up b1x128 | test accuracy (points vs FP32) | machine |",
             "|---|---|---:|---:|---|---|"]
    for name, data in dynamic.items():
        machine = data.get("machine", {})
        for row in data.get("rows", []):
            timing = row.get("timing", {})
            acc, dense = row.get("test_accuracy"), data.get("fp32_test_accuracy")
            change = "-" if acc is None or dense is None else f"{100 * acc:.2f} ({100 * (acc - dense):+.2f})"
            lines.append(f"| {name} | {row['name']} | {fmt(timing.get('b32x128', {}).get('speedup_vs_fp32'), '.2f', 'x')} | "
                         f"{fmt(timing.get('b1x128', {}).get('speedup_vs_fp32'), '.2f', 'x')} | {change} | "
                         f"{machine.get('cpu', '?')}, load {machine.get('load_average', ['?'])[0]} |")
    return lines + [""]


def batching_table(serve: dict[str, Any] | None) -> list[str]:
    """Serving with dynamic batching on (max batch 32) and off (max batch 1), same load client."""
    lines = ["## Batching on / off (serving)", ""]
    if serve is None:
        return lines + ["Not run yet: `python benchmarks/serve_batching.py`.", ""]
    lines += [f"`{serve['command']}` ({serve['timestamp']}; {serve['machine']}, {serve['cores']} cores; load "
              f"{serve['load']['before']} -> {serve['load']['after']}). The load client sends short sentences to "
              "/v1/embeddings at fixed concurrency; max batch 1 = batching off.", "",
              "| model | server | backend | max batch | max wait ms | req/s | vs batching off | p50 ms | p99 ms | errors |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in serve["models"]:
        off = next((r["throughput_rps"] for r in model["rows"] if r.get("max_batch_size") == 1
                    and r.get("server") == "autolite"), None)
        for row in model["rows"]:
            ratio = off and row["throughput_rps"] / off
            lines.append(f"| {row['model']} | {row['server']} | {row.get('backend', '-')} | {row['max_batch_size']} | "
                         f"{fmt(row.get('max_wait_ms'), '.0f')} | {row['throughput_rps']:.1f} | {fmt(ratio, '.2f', 'x')} | "
                         f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['errors']} |")
    return lines + [""]


def energy_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Joules per inference (per sequence) of FP32 eager and the recipe, from runs that recorded it."""
    rows = [(n, d) for n, d in results.items() if (d["candidate"].get("energy") or {}).get("joules_per_inference")]
    lines = ["## Energy per inference", "",
             "Joules per sequence over the timed calls. Source `rapl` = the package energy counter (whole "
             "package, other load included); `modelled` = **not measured**: the process's CPU-seconds x 10 W per "
             "busy core, used where no power counter is readable (as on this VM).", ""]
    if not rows:
        return lines + ["No run recorded energy yet (runs before the energy meter did not).", ""]
    lines += ["| case | model | recipe | batch x seq | FP32 eager J | recipe J | less energy | source |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for name, data in rows:
        base, cand = data["baseline"]["energy"], data["candidate"]["energy"]
        lines.append(f"| {name} | {data['model']} | `{data['recipe']['name']}` | {data['batch']}x{data['seq']} | "
                     f"{base['joules_per_inference']:.4f} | {cand['joules_per_inference']:.4f} | "
                     f"{base['joules_per_inference'] / cand['joules_per_inference']:.2f}x | {cand['source']} |")
    return lines + [""]
