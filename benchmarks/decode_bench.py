"""Decode speed, perplexity and memory of autolite's decode loop; writes JSON and docs/DECODE.md.

Batch 1, greedy, ``--tokens`` new tokens, ``--threads`` intra-op threads, on SmolLM2-135M by default:
HF ``generate`` FP32, our loop FP32 / INT8 (w8) / INT4 (w4g64 GPTQ), FP32 + activation skipping at
25/40/50%, and llama.cpp on the bundled Q4_1 GGUF when llama-cpp-python is installed. All decoders are
timed interleaved (A B C A B C ... after a warm-up), medians reported; tokens/s counts the decode steps
(the first token comes from prefill). Perplexity: ``autolite.evaluate`` on the held-out corpus split
(never used for calibration), activation skipping applied at every position (what decode computes).
Continuous batching: the serving DecodeBatcher on the INT4 model, 8 concurrent streams vs 1, aggregate
tokens/s and time to first token p50/p99 (rounds interleaved, medians), next to the bare decode step at 1 and
8 rows (what the step itself gains from batching: the ceiling for the batcher).

    python benchmarks/decode_bench.py                   # everything (long on 2 shared cores)
    python benchmarks/decode_bench.py --quick           # tiny-llama, a few tokens: checks the script
    python benchmarks/decode_bench.py --doc-only        # regenerate docs/DECODE.md from the JSON
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import autolite
from autolite.data import load_texts
from autolite.eval.bench import peak_memory_mb
from autolite.eval.compare import eos_ignored
from autolite.runtime.act_sparsity import ActivationSparsity, sparse_everywhere
from autolite.runtime.decode import Decoder, generate
from autolite.runtime.threads import in_passing_thread

log = logging.getLogger("decode_bench")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "decode"
DOC = ROOT / "docs" / "DECODE.md"
PROMPT = "The history of the city began"
W4 = [{"pass": "weight-only", "bits": 4, "group_size": 64, "symmetric": False, "method": "gptq", "embedding": True,
       "calib_tokens": 4096}]
W8 = "w8"


def _machine() -> dict[str, Any]:
    from autolite.runtime.hardware import probe

    info = probe().to_dict()
    keep = ("cpu_model", "model", "physical_cores", "logical_cores", "isa")
    load = os.getloadavg()
    return {**{k: info[k] for k in keep if k in info}, "load_avg_1_5_15": [round(x, 2) for x in load],
            "shared": load[0] > (os.cpu_count() or 1), "torch": torch.__version__}


def build_models(spec: str, args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, Any, Any]]:
    """label -> (model, tokenizer, family); compressed models cached under $AUTOLITE_CACHE/decode_bench."""
    from autolite.cache import cache_root, mark_used

    base, tok, family = autolite.load(spec)
    models = {"fp32": (base, tok, family)}
    recipes: dict[str, Any] = {"w8": W8, "w4g64": [{**W4[0], "method": args.w4_method}]}
    recipes.update({f"fp32+skip{int(s * 100)}": [ActivationSparsity(sparsity=s, calib_tokens=args.calib_tokens,
                                                                      allocation=args.allocation).to_dict()]
                    for s in args.sparsities})
    if args.only == "batching":  # the INT4 model only
        recipes = {"w4g64": recipes["w4g64"]}
    elif args.rows:  # a subset (fp32 is always measured: the reference)
        recipes = {label: recipe for label, recipe in recipes.items() if label.replace("fp32+", "") in args.rows}
    for label, recipe in recipes.items():
        suffix = (f"-{args.w4_method}" if label == "w4g64" else f"-c{args.calib_tokens}-{args.allocation}"
                  if "skip" in label else "")
        path = cache_root() / "decode_bench" / f"{spec.replace(':', '_')}-{label}{suffix}"
        if not (path / "config.json").is_file():
            log.info("compressing %s (%s), cached at %s", spec, label, path)
            small = autolite.compress(base, recipe, tokenizer=tok, family=family)
            autolite.save_model(small, tok, path, overwrite=True)
        mark_used(path)
        models[label] = autolite.load(str(path))
    return models


def decode_speed(models: dict[str, tuple], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved timing of every decoder; medians of decode tokens/s."""
    base, tok, _ = models["fp32"]
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    runners: dict[str, Callable[[], dict[str, Any]]] = {"hf generate fp32": _hf_runner(base, ids, args.tokens)}
    decoders = {}
    for label, (model, _, family) in models.items():
        decoders[label] = Decoder(model, family, compile=not args.eager)
        cache = decoders[label].new_cache(1, len(ids) + args.tokens)
        runners[f"ours {label}"] = _our_runner(decoders[label], tok, ids, args.tokens, cache)
    llm = _llamacpp_runner(ids, args)
    if llm is not None:
        runners["llama.cpp Q4_1 gguf"] = llm
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    for name, run in runners.items():  # warm-up (compiles our step)
        started = time.perf_counter()
        run()
        log.info("warm-up %s: %.1f s", name, time.perf_counter() - started)
    for _ in range(args.runs):
        for name, run in runners.items():
            samples[name].append(run())
            log.info("%s: %.1f tok/s", name, samples[name][-1]["tok_s"])
    rows = {name: {"tok_s": statistics.median(s["tok_s"] for s in runs), "runs_tok_s": [s["tok_s"] for s in runs],
                   "text": runs[-1].get("text", "")[:200]} for name, runs in samples.items()}
    hf_tokens = samples["hf generate fp32"][-1]["tokens"]
    for name in rows:
        if name.startswith("ours") and "tokens" in samples[name][-1]:
            rows[name]["same_tokens_as_hf_fp32"] = samples[name][-1]["tokens"] == hf_tokens
    for label, decoder in decoders.items():
        rows[f"ours {label}"]["peak_decode_mb"] = round(peak_memory_mb(runners[f"ours {label}"], torch.device("cpu")), 1)
        rows[f"ours {label}"]["weights_mb"] = round(_weights_mb(models[label][0]), 1)
    return {"tokens": args.tokens, "threads": torch.get_num_threads(), "runs": args.runs, "prompt": PROMPT,
            "compiled": not args.eager, "rows": rows}


def _weights_mb(model: torch.nn.Module) -> float:
    from autolite.eval.bench import model_size

    return model_size(model)[0]


def _hf_runner(model: torch.nn.Module, ids: list[int], n: int) -> Callable[[], dict[str, Any]]:
    inputs = torch.tensor([ids])

    def run() -> dict[str, Any]:
        with torch.inference_mode():
            started = time.perf_counter()
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - started
            started = time.perf_counter()
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n, do_sample=False,
                                 min_new_tokens=n, pad_token_id=0)
            total = time.perf_counter() - started
        return {"tok_s": (n - 1) / max(total - first, 1e-9), "tokens": out[0, len(ids):].tolist()}
    return run


def _our_runner(decoder: Decoder, tok: Any, ids: list[int], n: int, cache: Any) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        with eos_ignored(tok):  # exactly n tokens, like the other rows
            out = generate(decoder, tok, ids, n, cache=cache)
        return {"tok_s": out.tokens_per_s, "tokens": out.tokens, "text": out.text}
    return run


def _llamacpp_runner(ids: list[int], args: argparse.Namespace) -> Callable[[], dict[str, Any]] | None:
    if args.quick:
        return None
    try:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from llamacpp_util import llamacpp_decode_tps  # optional: needs the llamacpp extra

        from autolite.export import llamacpp
        from autolite.loading import smollm2_gguf

        path = smollm2_gguf()
        llm = llamacpp.load(path, n_ctx=args.tokens + 256, threads=args.threads, logits_all=False)
    except Exception as exc:  # llama-cpp-python not installed / not built here
        log.warning("llama.cpp row skipped: %s", exc)
        return None

    def run() -> dict[str, Any]:
        return llamacpp_decode_tps(path, PROMPT, args.tokens, args.threads, llm=llm)
    return run


def perplexities(models: dict[str, tuple], args: argparse.Namespace) -> dict[str, Any]:
    data = load_texts(None, split="heldout").head(args.ppl_texts)
    rows = {}
    for label, (model, tok, family) in models.items():
        with sparse_everywhere(model):
            result = autolite.evaluate(model, tok, data=data, family=family, max_length=128)
        rows[label] = result["perplexity"]
        log.info("perplexity %s: %.3f", label, rows[label])
    base = rows["fp32"]
    return {"texts": len(data.texts), "split": "heldout", "rows": {k: {"perplexity": v, "vs_fp32": v / base - 1}
                                                                   for k, v in rows.items()}}


def batching(models: dict[str, tuple], args: argparse.Namespace) -> dict[str, Any]:
    """The serving DecodeBatcher on the INT4 model: aggregate tokens/s of 1 and of 8 concurrent streams, and the
    bare step at 1 and 8 rows; ``--runs`` rounds, the configurations interleaved, medians."""
    from autolite.serve.decode_batcher import DecodeBatcher

    model, tok, family = models["w4g64"]
    decoder = in_passing_thread(Decoder, model, family, compile=not args.eager)  # packs its head: parallel ops
    prompts = [tok(f"{PROMPT} {i}", add_special_tokens=False)["input_ids"] for i in range(args.streams)]
    tok.eos_token_id = None
    counts = (1, args.streams)

    def new() -> DecodeBatcher:  # its KV cache is zeroed in a passing thread: no OpenMP team stays behind
        return in_passing_thread(DecodeBatcher, decoder, tok, slots=args.streams, max_len=256, prefix_entries=0)

    asyncio.run(_streams(new(), prompts, 4))  # every row count's step compiled (its start warms up) before timing
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for _ in range(args.runs):
        for n in counts:
            batcher = new()
            runs[n].append(asyncio.run(_streams(batcher, prompts[:n], args.batch_tokens)))
            runs[n][-1]["bare_step_ms"] = 1000 * in_passing_thread(_bare_step, decoder, batcher.cache, prompts[:n], 16)
            log.info("%d streams: %s", n, runs[n][-1])
    out: dict[str, Any] = {}
    for n in counts:
        row = dict(sorted(runs[n], key=lambda r: r["aggregate_tok_s"])[len(runs[n]) // 2])  # the median run
        step_ms = statistics.median(r["bare_step_ms"] for r in runs[n])
        out[f"{n} streams"] = {**row, "rounds_tok_s": [round(r["aggregate_tok_s"], 1) for r in runs[n]],
                               "bare_step_ms": step_ms, "bare_step_tok_s": 1000 * n / step_ms}
    one, many = out["1 streams"], out[f"{args.streams} streams"]
    out["speedup_8_vs_1"] = many["aggregate_tok_s"] / one["aggregate_tok_s"]
    out["bare_step_speedup_8_vs_1"] = many["bare_step_tok_s"] / one["bare_step_tok_s"]
    return out


def _bare_step(decoder: Decoder, cache: Any, prompts: list[list[int]], steps: int) -> float:
    """Median seconds of ``decoder.step`` alone over ``len(prompts)`` rows (no batcher, no sampling)."""
    for row, ids in enumerate(prompts):
        decoder.prefill(cache, row, ids)
    tokens, times = torch.zeros(len(prompts), dtype=torch.long), []
    decoder.step(cache, tokens)
    for _ in range(steps):
        started = time.perf_counter()
        decoder.step(cache, tokens)
        times.append(time.perf_counter() - started)
    for row in range(len(prompts)):
        cache.reset(row)
    return statistics.median(times)


def _on_threads(threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``threads`` intra-op threads in the calling thread. Every phase runs in a thread that
    ends (``in_passing_thread``), as the server does: a thread that lives on keeps its OpenMP team, and two
    teams on 2 cores slow every later decode step (libgomp's throttled spin)."""
    torch.set_num_threads(threads)
    return fn(*args)


async def _streams(batcher: Any, prompts: list[list[int]], n: int) -> dict[str, Any]:
    from autolite.serve.engine import GenerateParams
    from autolite.serve.stream import StreamPayload, TokenSink

    await batcher.start()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()

    async def one(ids: list[int]) -> float:
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(batcher.submit(("generate", GenerateParams(n, 0)),
                                                    [StreamPayload(ids, TokenSink(loop, queue, 0))], [len(ids)]))
        await queue.get()
        ttft = time.perf_counter() - started
        await task
        return ttft

    ttfts = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - started
    await batcher.stop()
    ttfts = sorted(ttfts)
    return {"streams": len(prompts), "tokens_each": n, "wall_s": wall, "aggregate_tok_s": len(prompts) * n / wall,
            "ttft_p50_s": statistics.median(ttfts), "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]}


# --- docs/DECODE.md, generated from the JSON -------------------------------------------------------------
def _targets(result: dict[str, Any]) -> list[str]:
    rows, ppl = result["speed"]["rows"], result.get("perplexity", {}).get("rows", {})
    lines = []
    llama = rows.get("llama.cpp Q4_1 gguf")
    w4 = rows.get("ours w4g64")
    if w4 and llama:
        ratio = w4["tok_s"] / llama["tok_s"]
        lines.append(f"- INT4 decode vs llama.cpp: {ratio:.2f}x (target >= 1.0x): **{'met' if ratio >= 1 else 'not met'}**")
    elif w4:
        lines.append("- INT4 decode vs llama.cpp: llama.cpp not measured in this run (llama-cpp-python missing)")
    if "w4g64" in ppl:
        change = ppl["w4g64"]["vs_fp32"]
        lines.append(f"- INT4 perplexity vs FP32: {change:+.2%} (target <= +2%): **{'met' if change <= 0.02 else 'not met'}**")
    skipping = result.get("skipping")
    if skipping:  # the skipping rows of their own runs (each with its own fp32 row)
        rows, ppl = skipping["speed"]["rows"], skipping.get("perplexity", {}).get("rows", {})
    for label in sorted(k for k in rows if "skip" in k and not k.endswith("skip0")):  # skip0: a control
        speed = rows[label]["tok_s"] / rows["ours fp32"]["tok_s"]
        change = ppl.get(label.replace("ours ", ""), {}).get("vs_fp32")
        ok = speed >= 1.3 and change is not None and change <= 0.03
        ppl_text = f", perplexity {change:+.2%}" if change is not None else ""
        lines.append(f"- activation skipping {label.split('skip')[1]}%: {speed:.2f}x decode over ours fp32{ppl_text} "
                     f"(target >= 1.3x at <= +3%): **{'met' if ok else 'not met'}**")
    if "batching" in result:
        speedup, bare = result["batching"]["speedup_8_vs_1"], result["batching"].get("bare_step_speedup_8_vs_1")
        lines.append(f"- 8 streams vs 1: {speedup:.2f}x aggregate tokens/s (target >= 4x): "
                     f"**{'met' if speedup >= 4 else 'not met'}**"
                     + (f" (the bare step itself: {bare:.2f}x at 8 rows vs 1)" if bare else ""))
    return lines


def write_doc(result: dict[str, Any], path: Path = DOC) -> None:
    speed, machine = result["speed"], result["machine"]
    ppl = result.get("perplexity", {}).get("rows", {})
    hf = speed["rows"]["hf generate fp32"]["tok_s"]
    llama = speed["rows"].get("llama.cpp Q4_1 gguf", {}).get("tok_s")
    lines = ["# Decode (autolite's own decode loop)", "",
             f"Generated by `benchmarks/decode_bench.py` from `{result['json']}` on {result['date']}. Do not edit by hand.",
             "", f"Machine: {machine.get('cpu_model') or machine.get('model', 'CPU')}, torch {machine['torch']}, "
             f"{speed['threads']} threads; load average (1, 5, 15 min) at start {machine['load_avg_1_5_15']}"
             + (f", at end {machine['load_avg_1_5_15_end']}" if "load_avg_1_5_15_end" in machine else "")
             + (" — **shared machine (CPU steal): absolute tok/s are low and noisy; ratios come from interleaved runs**"
                if machine.get("shared") else ""), "",
             f"Model `{result['model']}`, batch 1, greedy, {speed['tokens']} new tokens after \"{speed['prompt']}\", "
             f"median of {speed['runs']} interleaved runs ("
             + (f"numbers from the {speed['from_log']}" if speed.get("from_log") else f"`python {result.get('command', '')}`")
             + f"); our step {'compiled (torch.compile, fullgraph)' if speed['compiled'] else 'eager'}.",
             "", "| decoder | tok/s | vs HF FP32 | vs llama.cpp | perplexity | vs FP32 | peak decode MB | weights MB | "
             "greedy tokens = HF FP32 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in speed["rows"].items():
        if "skip" in name and "skipping" in result:
            continue  # measured again in their own run: the section below
        label = name.replace("ours ", "")
        p = ppl.get(label if name.startswith("ours") else "", {})
        vs_llama = f"{row['tok_s'] / llama:.2f}x" if llama else "-"
        perplexity = f"{p['perplexity']:.2f} | {p['vs_fp32']:+.2%}" if p else "- | -"
        lines.append(f"| {name} | {row['tok_s']:.1f} | {row['tok_s'] / hf:.2f}x | {vs_llama} | {perplexity} | "
                     f"{row.get('peak_decode_mb', '-')} | {row.get('weights_mb', '-')} | "
                     f"{row.get('same_tokens_as_hf_fp32', '-')} |")
    lines += _skipping_section(result.get("skipping"))
    if "batching" in result:
        command = result.get("batching_command") or result.get("command", "")
        own = result.get("batching_machine", {})
        load = (f", load average (1, 5, 15 min) {own['load_avg_1_5_15']} at start, {own['load_avg_1_5_15_end']} "
                "at end" if "load_avg_1_5_15_end" in own else "")
        lines += ["", "## Continuous batching (serving DecodeBatcher, INT4 model)", "",
                  f"Measured by `python {command}`{load} (step {'eager' if '--eager' in command else 'compiled'}); "
                  "all streams start together, each generates its tokens greedily; TTFT from submission. The run "
                  "with the median aggregate tok/s of the interleaved rounds; `bare step`: `Decoder.step` alone over "
                  "as many rows (no batcher), median.", "",
                  "| streams | tokens each | aggregate tok/s | rounds tok/s | TTFT p50 s | TTFT p99 s | bare step ms | "
                  "bare step tok/s |", "|---|---|---|---|---|---|---|---|"]
        for key, row in result["batching"].items():
            if isinstance(row, dict):
                bare = (f"{row['bare_step_ms']:.1f} | {row['bare_step_tok_s']:.1f}" if "bare_step_ms" in row
                        else "- | -")
                lines.append(f"| {row['streams']} | {row['tokens_each']} | {row['aggregate_tok_s']:.1f} | "
                             f"{', '.join(str(x) for x in row.get('rounds_tok_s', [])) or '-'} | "
                             f"{row['ttft_p50_s']:.3f} | {row['ttft_p99_s']:.3f} | {bare} |")
    run_notes = [n for n in result.get("notes", []) if n.startswith("- w4g64 here")]  # the rest: NOTES below
    lines += ["", "## Targets", "", *_targets(result), "", "## Notes", "", *NOTES, *run_notes]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def _save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


NOTES = [
    "- The batcher steps in a thread of its own (the event loop holds the main thread), at the bare step's speed "
    "since the model, the decoder and the batchers are built in threads that end (`in_passing_thread`): every "
    "thread that has run torch's parallel regions keeps an OpenMP team, and two lasting teams on 2 cores make "
    "libgomp throttle its spin-wait between the step's many small regions (the 1-row step measured 15-20 ms "
    "instead of 8.3-8.8 ms; the previous table, 49 tok/s for one stream, carried that).",
    "- Our decode step: a functional forward over the model's own modules with a static KV cache, compiled once "
    "(`torch.compile(fullgraph=True)`) unless the run says eager; INT4 rows run `aten._weight_int4pack_mm_for_cpu`, INT8 rows "
    "`aten._weight_int8pack_mm` inside the graph; the INT8 head/embedding of w4g64/w8 is INT8 per row (llama.cpp's "
    "file: Q4_1 blocks, Q8_0 token embedding used as the tied head: the same bytes per step), and at decode the head "
    "runs on the INT4 kernel as the two 4-bit halves of its INT8 codes (same weights, outputs within BF16 rounding; "
    "a second copy of the head codes in that layout is held). In the INT4 model q/k/v "
    "and gate/up run as one kernel call each (their codes stacked: 4 calls per layer instead of 7); one-query "
    "attention is products and sums fused by the compiler (no SDPA call); the compiled step only reads the KV "
    "cache and the new token's K/V of every layer is written after it.",
    "- Activation skipping (TEAL-style): per-linear thresholds calibrated on the corpus calib split; skipN = N% of "
    "the block weights skipped: N% of every linear's inputs unless the command says `--allocation sensitivity` "
    "(split over the linears by calibrated skip error). At decode each linear reads only the weight rows of its "
    "active inputs: `embedding_bag` (sum, inputs as per-sample weights) over the active rows of the transposed FP32 "
    "weight, one bag per thread, inside one custom op. Perplexity is measured with the thresholds applied at every "
    "position (what decode computes); prefill stays dense.",
    "- Perplexity: `autolite.evaluate` on the held-out corpus split, never used for calibration.",
    "- Continuous batching: the batcher adds little to the step (1 stream through it runs at about the bare 1-row "
    "step's rate); the 8-row step itself costs about 2.8x the 1-row step because the INT4 "
    "(`_weight_int4pack_mm_for_cpu`) and INT8 (`_weight_int8pack_mm`) CPU kernels take rows in blocks of 4 (PyTorch "
    "source: BLOCK_M = 4), so 8 rows dequantize every weight twice, and these kernels are most of the step.",
    "- llama.cpp: llama-cpp-python on the bundled SmolLM2 Q4_1 GGUF, one `llama_decode` per token, same threads; "
    "under CPU contention its spinning thread barrier degrades more than torch's threads do.",
]


SECTIONS = ("speed", "perplexity", "batching")


def speed_from_log(log_path: Path, command: str, tokens: int, eager: bool) -> dict[str, Any]:
    """The speed section from the per-run lines a run logged (``NAME: X tok/s``), for a run stopped before
    it wrote its JSON; every timed round that completed counts (warm-up lines do not)."""
    import re

    runs: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = re.search(r"decode_bench: (?!warm-up)(.+): ([0-9.]+) tok/s$", line)
        if match:
            runs.setdefault(match.group(1), []).append(float(match.group(2)))
    complete = min(len(v) for v in runs.values())
    rows = {name: {"tok_s": statistics.median(v[:complete]), "runs_tok_s": v[:complete]} for name, v in runs.items()}
    return {"tokens": tokens, "threads": 2, "runs": complete, "prompt": PROMPT, "compiled": not eager, "rows": rows,
            "from_log": f"{log_path.name} of `python {command}`, stopped after {complete} complete timed round(s)"}


def _skipping_section(skipping: dict[str, Any] | None) -> list[str]:
    """The activation-skipping table of its own runs: tok/s over that run's own fp32 row."""
    if not skipping:
        return []
    speed, ppl = skipping["speed"], skipping.get("perplexity", {}).get("rows", {})
    load = skipping["speed_machine"]
    lines = ["", "## Activation skipping (its own runs)", "",
             f"Speed: `python {skipping['speed_command']}`, median of {speed['runs']} interleaved runs, load average "
             f"{load['load_avg_1_5_15']} at start, {load.get('load_avg_1_5_15_end', '-')} at end; perplexity: "
             + (f"`python {skipping['perplexity_command']}`" if ppl else "not measured") + ". skip0 (when measured) is "
             "a control: the same sparse kernel with thresholds near 0 (almost every input active), so the gain of "
             "the kernel itself over the dense GEMV shows apart from the gain of skipping.", "",
             "| decoder | tok/s | vs ours fp32 (same run) | perplexity | vs FP32 |", "|---|---|---|---|---|"]
    base = speed["rows"]["ours fp32"]["tok_s"]
    for name, row in speed["rows"].items():
        if name == "ours fp32" or "skip" in name:
            p = ppl.get(name.replace("ours ", ""))
            perplexity = f"{p['perplexity']:.2f} | {p['vs_fp32']:+.2%}" if p else "- | -"
            lines.append(f"| {name} | {row['tok_s']:.1f} | {row['tok_s'] / base:.2f}x | {perplexity} |")
    return lines


def _skipping_parts(out: Path) -> dict[str, Any] | None:
    """The skipping rows of separate ``--only speed`` / ``--only perplexity`` runs: decode-skip-SECTION.json (such
    a run's output kept apart from the other --only runs), else decode-SECTION.json."""
    parts: dict[str, Any] = {}
    for section in ("speed", "perplexity"):
        path = out.with_name(f"{out.stem}-skip-{section}.json")
        path = path if path.is_file() else out.with_name(f"{out.stem}-{section}.json")
        data = json.loads(path.read_text()) if path.is_file() else {}
        if any("skip" in name for name in data.get(section, {}).get("rows", {})):
            parts.update({section: data[section], f"{section}_command": data.get("command", ""),
                          f"{section}_machine": data["machine"]})
    return parts if "speed" in parts else None


def merged(out: Path) -> dict[str, Any]:
    """The main JSON, with any section measured by a separate ``--only SECTION`` run (decode-SECTION.json)."""
    result = json.loads(out.read_text())
    for section in SECTIONS:
        part = out.with_name(f"{out.stem}-{section}.json")
        if not part.is_file():
            continue
        data = json.loads(part.read_text())
        # batching: an --only run of the main run's day or later replaces it (by the dates recorded in the JSON,
        # not file times: a fresh clone's files all have the checkout's time)
        newer = section == "batching" and data.get("date", "") >= result.get("date", "")
        if section not in result or newer:
            result[section], result[f"{section}_command"] = data[section], data.get("command", "")
            result[f"{section}_machine"] = data.get("machine", {})
    skipping = _skipping_parts(out)
    if skipping:
        result["skipping"] = skipping
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.25, 0.4, 0.5])
    parser.add_argument("--ppl-texts", type=int, default=64)
    parser.add_argument("--calib-tokens", type=int, default=4096, help="activation-sparsity calibration tokens")
    parser.add_argument("--allocation", default="uniform", choices=["uniform", "sensitivity"],
                        help="activation-sparsity split over the linears")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--eager", action="store_true", help="do not compile our step")
    parser.add_argument("--rows", nargs="*", default=None,
                        help="measure only these of our models besides fp32: w8 w4g64 skip25 skip40 skip50")
    parser.add_argument("--w4-method", default="gptq", choices=["gptq", "rtn"], help="INT4 quantization method")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--only", choices=SECTIONS, help="measure one section into decode-SECTION.json "
                                                           "(merged into the doc by --doc-only)")
    parser.add_argument("--quick", action="store_true", help="tiny-llama, few tokens: checks the script")
    parser.add_argument("--doc-only", action="store_true")
    parser.add_argument("--from-log", type=Path, help="with --speed-command: rebuild the speed JSON from a run's log")
    parser.add_argument("--speed-command", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.model, args.tokens, args.runs, args.ppl_texts, args.batch_tokens = "random:tiny-llama", 16, 1, 8, 8
    main_out = args.out or RESULTS / ("decode-quick.json" if args.quick else "decode.json")
    if args.from_log:
        _save({"model": args.model, "date": datetime.date.today().isoformat(), "machine": _machine(),
               "json": str(main_out.relative_to(ROOT)), "command": args.speed_command, "w4_method": args.w4_method,
               "notes": [f"- w4g64 here: INT4 group 64 asymmetric, {args.w4_method}, INT8 embedding/head (the w4g64 "
                         "preset is the same with gptq)."],
               "speed": speed_from_log(args.from_log, args.speed_command, args.tokens, args.eager)}, main_out)
    if args.doc_only or args.from_log:
        write_doc(merged(main_out))
        return
    out = main_out.with_name(f"{main_out.stem}-{args.only}.json") if args.only else main_out
    result: dict[str, Any] = {"model": args.model, "date": datetime.date.today().isoformat(), "machine": _machine(),
                              "json": str(main_out.relative_to(ROOT)) if main_out.is_relative_to(ROOT) else str(main_out),
                              "command": " ".join(sys.argv), "w4_method": args.w4_method,
                              "notes": NOTES + [f"- w4g64 here: INT4 group 64 asymmetric, {args.w4_method}, INT8 "
                                                "embedding/head (the w4g64 preset is the same with gptq)."]}
    models = in_passing_thread(_on_threads, args.threads, build_models, args.model, args)
    measures = {"speed": decode_speed, "perplexity": perplexities, "batching": batching}
    for section in ([args.only] if args.only else [s for s in SECTIONS if s not in args.skip]):
        result[section] = in_passing_thread(_on_threads, args.threads, measures[section], models, args)
        result["machine"]["load_avg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
        _save(result, out)
    if not args.only:
        write_doc(result, out.with_suffix(".md") if args.quick else DOC)
    print(json.dumps({k: result[k] for k in SECTIONS if k in result}, indent=2, default=str))


if __name__ == "__main__":
    main()
