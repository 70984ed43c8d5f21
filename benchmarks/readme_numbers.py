"""Write the README's measured numbers from the benchmark JSON, so no number there is typed by hand.

    python benchmarks/readme_numbers.py           # rewrites the block between the README's numbers markers

Sources: benchmarks/results/optimize/fortunes.json (optimize_bench.py), benchmarks/results/dynamic/*.json
(dynamic_bench.py), benchmarks/results/e2e-*.json (run_all.py), benchmarks/results/peers/*.json (peers.py),
benchmarks/results/decode/decode.json (decode_bench.py), benchmarks/results/serve/serve_batching.json
(serve_batching.py). Each table names its machine and load.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import decode_bench  # benchmarks/decode_bench.py: the decode JSON with its separately measured sections
import make_docs  # benchmarks/make_docs.py: which peer is the best one (the same rule as docs/PEERS.md)
import run_all  # benchmarks/run_all.py, beside this script: the end-to-end cases' JSON
import tables  # benchmarks/tables.py: how a case names its engine and load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- numbers:begin (benchmarks/readme_numbers.py) -->", "<!-- numbers:end -->"
DYNAMIC = ("token-drop", "token-drop-distill", "early-exit", "route", "head-select", "combined")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _load(values: Any) -> str:
    return "/".join(f"{v:.0f}" for v in values) if isinstance(values, list) else str(values)


def optimize_rows() -> list[str]:
    data = _read(RESULTS / "optimize" / "fortunes.json")
    if not data:
        return []
    same, load = data["same_run"], data.get("load_average", {})
    lines = [f"`autolite optimize --max-drop 1` on the fortunes task (MiniLM classifier, batch {data['batch']} x "
             f"{data['seq']}, {data['minutes']:.0f}-minute search; {data['machine']['cpu_model']}, 2 cores, load "
             f"average {_load(load.get('start'))} -> {_load(load.get('end'))}; `{data['command']}`):", "",
             "| model | ms / batch | vs FP32 eager | test accuracy | energy per inference |",
             "|---|---:|---:|---:|---:|"]
    for name in ("fp32", "fast-dense", "pick"):
        row = same[name]
        lines.append(f"| {name} | {row['ms']:.0f} | {row['speedup']:.2f}x | {row['test_acc']:.2f}% | "
                     f"{row['joules_per_inference']:.3f} J ({same.get('energy_source', '?')}) |")
    return lines + [""]


def _speed(row: dict[str, Any], shape: str) -> str:
    timing = row.get("timing", {}).get(shape)
    return f"{timing['speedup_vs_dense']:.2f}x / {timing['speedup_vs_fp32']:.2f}x" if timing else "-"


def _accuracy(row: dict[str, Any]) -> str:
    acc, dense = row.get("test_accuracy"), row.get("test_accuracy_dense")
    if acc is None or dense is None:
        return "-"
    return f"{100 * acc:.1f}% ({100 * (acc - dense):+.1f} pt vs its dense model)"


def adaptive_rows() -> list[str]:
    """Dynamic inference on the test texts as they come (each batch padded to its own longest text)."""
    lines = ["Dynamic inference on the same task, on the test texts as they come (each batch padded to its longest "
             "text, vs FP32 eager on the same batches; `python benchmarks/dynamic_bench.py`, 1 torch thread):", "",
             "| technique | batch 32 | batch 1 | test accuracy (FP32 -> row) | load average |",
             "|---|---:|---:|---:|---:|"]
    count = 0
    for name in DYNAMIC:
        data = _read(RESULTS / "dynamic" / "adaptive" / f"{name}.json")
        for row in (data or {}).get("rows", []):
            speed = row.get("speedup", {})
            if "b32" not in speed:
                continue
            lines.append(f"| {row['name']} | {speed['b32']:.2f}x | {speed.get('b1', 0):.2f}x | "
                         f"{100 * row['fp32_test_accuracy']:.1f}% -> {100 * row['test_accuracy']:.1f}% "
                         f"({100 * (row['test_accuracy'] - row['fp32_test_accuracy']):+.2f} pt) | "
                         f"{_load(data.get('load_average_1m'))} |")
            count += 1
    return lines + [""] if count else []


def dynamic_rows() -> list[str]:
    lines = ["The same techniques on full 128-token rows (speed-up vs the same model's dense path / vs FP32 eager; "
             "`python benchmarks/dynamic_bench.py`, 1 torch thread, shared machine):", "",
             "| technique | b32x128 | b1x128 | test accuracy |", "|---|---:|---:|---:|"]
    count = 0
    for name in DYNAMIC:
        data = _read(RESULTS / "dynamic" / f"{name}.json")
        for row in (data or {}).get("rows", []):
            if row.get("kind") == "classifier" and row.get("timing"):
                lines.append(f"| {row['name']} | {_speed(row, 'b32x128')} | {_speed(row, 'b1x128')} | "
                             f"{_accuracy(row)} |")
                count += 1
    return lines + [""] if count else []


def e2e_rows() -> list[str]:
    """The seed models' end-to-end rows (pruning + the engine vs FP32 eager of the unpruned model)."""
    rows = [data for name, data in run_all.bench_results().items() if name.startswith("e2e-")]
    if not rows:
        return []
    lines = ["End to end on the seed models: half the layers, half the heads and 3/4 of the FFN pruned, then "
             "`fast-dense`, vs FP32 eager of the unpruned model (`python benchmarks/run_all.py --only e2e-`, "
             "recipes `recipes/*-e2e.yaml`). Random weights with the real shapes: the cosine is fidelity to the "
             "unpruned model, **not accuracy**; on a trained task see the optimize and dynamic tables above.",
             "", "| model | batch x seq | engine picked | speed-up vs FP32 eager | cosine vs unpruned FP32 | "
             "machine, load |",
             "|---|---|---|---:|---:|---|"]
    for data in rows:
        lines.append(f"| {data['model']} | {data['batch']} x {data['seq']} | {tables.engine_choice(data['notes'])} | "
                     f"{data['speedup']:.2f}x | {tables.fmt(data['fidelity'].get('cosine'), '.3f')} | "
                     f"{tables.machine_name(data['machine'], data['threads'])}; {tables.load_text(data)} |")
    return lines + [""]


def peer_rows() -> list[str]:
    lines = ["Against the peers (`python benchmarks/peers.py`; every contender in one process, round-robin):", "",
             "| model | batch x seq | best peer (vs FP32 eager) | fast-dense (vs FP32 eager) | fast-dense / best peer "
             "| load average |", "|---|---|---|---:|---:|---:|"]
    count = 0
    for path in sorted((RESULTS / "peers").glob("*.json")):
        data = _read(path)
        rows = data.get("rows") or {}
        peer, ours = make_docs.best_peer(rows), rows.get("autolite fast-dense", {})
        if peer is None or "speedup" not in ours:
            continue
        name, best = peer
        load = data.get("load", {}).get("loadavg_1min_after", "?")
        missing = [n for n, r in rows.items() if r.get("side") == "peer" and "skipped" in r]
        if missing:
            name += f" (not run: {', '.join(missing)})"
        lines.append(f"| {data['model']} | {data['batch']} x {data['seq']} | {name} {best['speedup']:.2f}x | "
                     f"{ours['speedup']:.2f}x | {ours['speedup'] / best['speedup']:.2f}x | {load} |")
        count += 1
    return lines + [""] if count else []


def decode_rows() -> list[str]:
    main = RESULTS / "decode" / "decode.json"
    data = decode_bench.merged(main) if main.is_file() else {}
    rows = data.get("speed", {}).get("rows", {})
    llama = next((r["tok_s"] for n, r in rows.items() if n.startswith("llama.cpp")), None)
    if not rows or not llama:
        return []
    machine, speed = data["machine"], data["speed"]
    ppl = data.get("perplexity", {}).get("rows", {})
    lines = [f"Decode, {data['model']} batch 1, {speed['tokens']} greedy tokens, {speed['threads']} threads "
             f"({machine['cpu_model']}, load average {_load(machine.get('load_avg_1_5_15'))} -> "
             f"{_load(machine.get('load_avg_1_5_15_end'))}; `python {data['command']}`):", "",
             "| decoder | tok/s | vs llama.cpp | perplexity vs FP32 |", "|---|---:|---:|---:|"]
    for name, row in rows.items():
        if "skip" in name and "skipping" in data:
            continue  # measured in their own run: below
        change = ppl.get(name.removeprefix("ours "), {}).get("vs_fp32") if name.startswith("ours") else None
        lines.append(f"| {name} | {row['tok_s']:.1f} | {row['tok_s'] / llama:.2f}x | "
                     f"{'-' if change is None else f'{100 * change:+.2f}%'} |")
    return lines + ["", *_skipping_lines(data.get("skipping")), *_batching_lines(data)]


def _skipping_lines(skipping: dict[str, Any] | None) -> list[str]:
    """Activation skipping against the same FP32 model in the same run."""
    if not skipping:
        return []
    rows, ppl = skipping["speed"]["rows"], skipping.get("perplexity", {}).get("rows", {})
    base = rows["ours fp32"]["tok_s"]
    parts = []
    for name, row in rows.items():
        p = ppl.get(name.removeprefix("ours "))
        if "skip" in name and p:
            parts.append(f"{name.split('+')[-1]} {row['tok_s'] / base:.2f}x at {100 * p['vs_fp32']:+.2f}% perplexity")
    load = _load(skipping["speed_machine"].get("load_avg_1_5_15"))
    return [f"Activation skipping vs the same FP32 model in one run (`python {skipping['speed_command']}`, load "
            f"{load}): {'; '.join(parts)}.", ""] if parts else []


def _batching_lines(data: dict[str, Any]) -> list[str]:
    batching = data.get("batching", {})
    if "speedup_8_vs_1" not in batching:
        return []
    bare = batching.get("bare_step_speedup_8_vs_1")
    return [f"Continuous batching (INT4 model, `python {data.get('batching_command') or data['command']}`): 8 "
            f"streams give {batching['speedup_8_vs_1']:.2f}x one stream's aggregate tokens/s"
            + (f" (the bare decode step alone: {bare:.2f}x from 1 to 8 rows)." if bare else "."), ""]


def export_rows() -> list[str]:
    """GGUF perplexity in llama.cpp (ours vs llama.cpp's own quantization) and the MLX export's logits match."""
    gguf = _read(RESULTS / "export_quality_gguf.json")
    mlx = _read(RESULTS / "export_quality_mlx.json")
    lines = []
    if gguf:
        lines += [f"Exports of SmolLM2-135M (its only offline weights are the bundled Q4_1 GGUF, dequantized: "
                  f"llama.cpp's own Q4_1 lands back on that grid), held-out perplexity run in llama.cpp "
                  f"({gguf['held_out']} `python {gguf['command']}`):", "",
                  "| GGUF | llama.cpp's own quantization | autolite exported (GPTQ INT4; INT8 per channel) | "
                  "autolite round-to-nearest INT4 exported |", "|---|---:|---:|---:|"]
        by = {(r["format"], r["name"].split()[1] if r["source"] == "autolite export" else "llama.cpp"): r
              for r in gguf["rows"]}
        for fmt in ("q4_0", "q4_1", "q8_0"):
            own, gptq, rtn = by.get((fmt, "llama.cpp")), by.get((fmt, "GPTQ")), by.get((fmt, "RTN"))
            ours = gptq or by.get((fmt, "INT8"))
            cells = [f"{r['ppl_llamacpp']:.2f}" if r else "-" for r in (own, ours, rtn)]
            lines.append(f"| {fmt.upper()} | {' | '.join(cells)} |")
        lines.append("")
    for row in (mlx or {}).get("rows", []):
        if "logits_rel_l2" in row:
            lines += [f"MLX export of the GPTQ `w4g64` model as it is (`python {mlx['command']}`): logits relative "
                      f"L2 {row['logits_rel_l2']:.1e} against our INT4 model on {row['texts']} held-out texts; "
                      f"mlx-lm answers \"{row['answer_mlx']}\" (ours: \"{row['answer_autolite_int4']}\").", ""]
    return lines


def serving_rows() -> list[str]:
    data = _read(RESULTS / "serve" / "serve_batching.json")
    if not data:
        return []
    lines = [f"Serving embeddings ({data['args']['concurrency']} clients, one short sentence per request; "
             f"{data['machine']}, load {data['load']['before']} -> {data['load']['after']}; `{data['command']}`):",
             "", "| served model (backend) | batch-1 server req/s | best batched req/s | bare forward seq/s "
             "| batched / bare forward | errors |", "|---|---:|---:|---:|---:|---:|"]
    for model in data["models"]:
        rows = [r for r in model["rows"] if r.get("server") == "autolite"]
        single = [r for r in rows if r["max_batch_size"] == 1]
        best = max((r for r in rows if r["max_batch_size"] > 1), key=lambda r: r["throughput_rps"], default=None)
        if not single or best is None:
            continue
        forward = model["forward"]["seq_per_s"]
        lines.append(f"| {model['model']} ({best['backend']}) | {single[0]['throughput_rps']:.0f} | "
                     f"{best['throughput_rps']:.0f} | {forward:.0f} | {best['throughput_rps'] / forward:.0%} | "
                     f"{sum(r['errors'] for r in rows)} |")
    return lines + [""]


def render() -> str:
    return "\n".join([BEGIN, *optimize_rows(), *adaptive_rows(), *dynamic_rows(), *e2e_rows(), *peer_rows(),
                      *decode_rows(), *export_rows(), *serving_rows(), END])


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit("README.md has no numbers markers")
    readme.write_text(pattern.sub(lambda _: render(), text))
    print("README.md numbers rewritten from benchmarks/results/")


if __name__ == "__main__":
    main()
