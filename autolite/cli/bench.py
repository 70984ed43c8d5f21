"""``autolite bench``: FP32 eager baseline vs the recipe's model, interleaved in one process."""
from __future__ import annotations

from pathlib import Path

import typer

from autolite.cli.common import (BATCH_OPT, DATA_OPT, JSON_OPT, MODEL_ARG, RECIPE_OPT, RUNS_OPT, SEQ_OPT, THREADS_OPT,
                                 WARMUP_OPT, console, flag, progress_bar, rows_table, write_json_atomic)
from autolite.eval.compare import bench_model
from autolite.report.tables import comparison_rows
from autolite.runtime.roofline import floor_line


def bench(model: str = MODEL_ARG, recipe: str = RECIPE_OPT,
          batch: int = BATCH_OPT, seq: int = SEQ_OPT, threads: int = THREADS_OPT, runs: int = RUNS_OPT,
          warmup: int = WARMUP_OPT, data: Path = DATA_OPT,
          device: str = typer.Option("cpu", help="cpu, cuda or auto (CUDA when present)."),
          roofline: bool = flag(False, "--roofline", help="Also report GFLOP/s and GB/s per layer kind "
                                        "of the candidate against this machine's measured peaks."),
          decode_tokens: int = typer.Option(64, "--decode-tokens", min=0, max=4096,
                                            help="Decoders: also time batch-1 greedy decode of this many tokens "
                                                 "on autolite's own decode loop (compiled step); 0 skips it."),
          json_out: Path = JSON_OPT) -> None:
    """Measure latency, throughput, memory, size and fidelity of MODEL+recipe against FP32 eager."""
    with progress_bar(f"bench {model} [{recipe}] (load, compress, warm-up, {runs} interleaved runs)",
                      total=runs) as advance:
        result = bench_model(model, recipe, batch=batch, seq=seq, runs=runs, warmup=warmup,
                             threads=threads, data=data, device=device, roofline=roofline,
                             decode_tokens=decode_tokens, progress=advance)
    console.print(rows_table(f"{model}: FP32 eager vs recipe '{result['recipe']['name']}'",
                             ("metric", "FP32 eager", result["recipe"]["name"]), comparison_rows(result)))
    if roofline:
        _print_roofline(result["roofline"])
        console.print(f"  {floor_line(result['roofline'].get('floor') or {}, result['baseline']['median_ms'])}")
    if "decode" in result:
        _print_decode(result["decode"], result["recipe"]["name"])
    if "routing" in result:
        _print_routing(result["routing"])
    for note in result["notes"]:
        console.print(f"  note: {note}", markup=False)
    if json_out:
        write_json_atomic(json_out, result)
        console.print(f"wrote {json_out}", markup=False)


def _print_roofline(roofline: dict) -> None:
    peaks = roofline["peaks"]
    headers = ("layer kind", "ms/forward", "share", "GFLOP/s", "% GEMM peak", "weight GB/s", "% bandwidth")
    title = (f"roofline (measured peaks: FP32 GEMM {peaks['gemm_gflops']:.0f} GFLOP/s, "
             f"INT8 GEMM {peaks.get('int8_gemm_gops', 0):.0f} GOP/s, "
             f"copy {peaks['bandwidth_gbs']:.1f} GB/s)")
    console.print(rows_table(title, headers, [tuple(row) for row in roofline["rows"]]))


def _print_decode(decode: dict, name: str) -> None:
    console.print(f"  decode, batch 1, {decode['new_tokens']} greedy tokens after a {decode['prompt_tokens']}-token "
                  f"prompt (autolite decode loop, {'compiled' if decode['compiled'] else 'eager'} step, "
                  f"{decode['threads']} threads, median of {decode['runs']}): FP32 "
                  f"{decode['baseline']['tokens_per_s']:.1f} tok/s, {name} {decode['candidate']['tokens_per_s']:.1f} "
                  f"tok/s ({decode['speedup']:.2f}x)", markup=False)


def _print_routing(routing: dict) -> None:
    rows = [(path, f"{100 * p['share']:.1f}%", str(p["rows"]),
             f"{100 * p['accuracy']:.2f}" if "accuracy" in p else "-") for path, p in routing["paths"].items()]
    console.print(rows_table(f"routes on {routing['texts']} texts (max_tokens {routing['max_tokens']}, "
                             f"tau {routing['tau']:.3f})", ("path", "share", "rows", "accuracy"), rows))
    ms = routing["ms_per_batch"]
    console.print(f"  ms per batch of {routing['batch']}: routed {ms['routed']:.2f}, main only {ms['main']:.2f}, "
                  f"fast only {ms['fast']:.2f} ({routing['speedup_vs_main']:.2f}x vs main)")


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite bench random:bert-base --recipe ort-int8 --batch 32 --seq 128 "
                         "--json bench.json")(bench)
