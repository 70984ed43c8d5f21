"""Run the benchmark cases behind the README's numbers and write docs/BENCHMARKS.md.

Each case is one `autolite bench` run (FP32 eager baseline and candidate interleaved in one process),
saved as JSON under benchmarks/results/. Usage:

    python benchmarks/run_all.py                 # every case
    python benchmarks/run_all.py --only minilm   # cases whose name contains "minilm"
    python benchmarks/run_all.py --render        # only re-render the markdown from saved JSON

A model spec ending in ``#encoder`` (``random:t5-small#encoder``) times the encoder stack of a seq2seq
model alone (``T5EncoderModel`` with the model's encoder weights), measured as ``autolite bench`` measures
(``autolite.eval.compare``: interleaved timing, memory, cosine of mean-pooled states vs FP32).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

import autolite
from autolite.arch import encoder_view
from autolite.data import load_texts
from autolite.errors import ArgumentError
from autolite.eval.compare import compare
from autolite.io import write_json_atomic
from autolite.passes import PassContext, compress, load_recipe
from autolite.runtime.hardware import probe

import tables  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"
TABLE_END = "<!-- end of the generated table: sections below are kept on re-render -->"
DYNAMIC = [RESULTS / "dynamic" / f"{name}.json" for name in ("early-exit", "combined", "route")]

# name -> (model, recipe, batch, seq, runs)
CASES = {
    "minilm-default-b32": ("minilm", "default", 32, 128, 10),
    "minilm-bf16-b32": ("minilm", "bf16", 32, 128, 10),
    "minilm-int8-dynamic-b32": ("minilm", "int8-dynamic", 32, 128, 10),
    "minilm-int8-dynamic-b1": ("minilm", "int8-dynamic", 1, 128, 20),
    "bert-base-int8-dynamic-b32": ("random:bert-base", "int8-dynamic", 32, 128, 5),
    "bert-base-int8-dynamic-b1": ("random:bert-base", "int8-dynamic", 1, 128, 10),
    "bert-base-default-b32": ("random:bert-base", "default", 32, 128, 5),
    "bert-base-prune-h40-f50-b32": ("random:bert-base", "recipes/bert-prune-h40-f50.yaml", 32, 128, 5),
    "bert-base-fast-dense-b32": ("random:bert-base", "fast-dense", 32, 128, 5),
    "bert-base-fast-dense-b1": ("random:bert-base", "fast-dense", 1, 128, 10),
    "bert-base-prune-h40-f50-fast-b32": ("random:bert-base", "recipes/bert-prune-h40-f50-fast.yaml", 32, 128, 10),
    "bert-base-ort-int8-b32": ("random:bert-base", "ort-int8", 32, 128, 5),
    "bert-base-ort-int8-b1": ("random:bert-base", "ort-int8", 1, 128, 10),
    "minilm-ort-int8-b32": ("minilm", "ort-int8", 32, 128, 10),
    "minilm-ort-int8-b1": ("minilm", "ort-int8", 1, 128, 20),
    "minilm-int8-dynamic-b8": ("minilm", "int8-dynamic", 8, 128, 10),
    "minilm-fast-dense-b32": ("minilm", "fast-dense", 32, 128, 10),
    "minilm-fp16-b32": ("minilm", "fp16", 32, 128, 10),
    "minilm-w4g64-b32": ("minilm", "w4g64", 32, 128, 10),
    # end to end: pruning (layers, heads, FFN) + the engine, against FP32 eager of the unpruned model
    "e2e-bert-base-b32": ("random:bert-base", "recipes/bert-base-e2e.yaml", 32, 128, 5),
    "e2e-bert-base-b1": ("random:bert-base", "recipes/bert-base-e2e.yaml", 1, 128, 10),
    "e2e-roberta-large-b32": ("random:roberta-large", "recipes/roberta-large-e2e.yaml", 32, 128, 5),
    "e2e-roberta-large-b1": ("random:roberta-large", "recipes/roberta-large-e2e.yaml", 1, 128, 10),
    "e2e-t5-small-encoder-b32": ("random:t5-small#encoder", "recipes/t5-small-encoder-e2e.yaml", 32, 128, 5),
    "e2e-t5-small-encoder-b1": ("random:t5-small#encoder", "recipes/t5-small-encoder-e2e.yaml", 1, 128, 10),
}
ENCODER_SUFFIX = "#encoder"


def run_case(name: str, model: str, recipe: str, batch: int, seq: int, runs: int) -> None:
    """One case in a fresh process (``autolite bench``, or this script's encoder-stack harness)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    if model.endswith(ENCODER_SUFFIX):
        cmd = [sys.executable, __file__, "--encoder-case", name]
    else:
        cmd = [sys.executable, "-m", "autolite.cli", "bench", model, "--recipe", recipe, "--batch", str(batch),
               "--seq", str(seq), "--runs", str(runs), "--json", str(out)]
    print(f"$ {name}: {model} [{recipe}] {batch}x{seq}, {runs} runs", flush=True)
    before = loadavg()
    subprocess.run(cmd, check=True, cwd=ROOT)
    data = json.loads(out.read_text())
    data["load"] = {"before": before, "after": loadavg(), "what": "1-minute load average at start and end"}
    write_json_atomic(out, data)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else -1.0


def encoder_stack(spec: str) -> tuple[torch.nn.Module, Any, Any]:
    """``T5EncoderModel`` holding the encoder weights of seq2seq model ``spec``, its tokenizer and family (the
    seq2seq family's encoder view: the passes find the encoder layers only)."""
    full, tokenizer, family = autolite.load(spec.removesuffix(ENCODER_SUFFIX))
    if family.kind != "seq2seq":
        raise ArgumentError(f"{spec}: '{ENCODER_SUFFIX}' takes a seq2seq model; this one is {family.kind}")
    encoder, view = encoder_of(full, family)
    return encoder, tokenizer, view


def encoder_of(full: torch.nn.Module, family: Any) -> tuple[torch.nn.Module, Any]:
    """``T5EncoderModel`` holding the encoder weights of the seq2seq model ``full``, and its family's encoder view."""
    encoder = transformers.T5EncoderModel(full.config)
    encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("shared.", "encoder."))},
                            strict=False)
    return encoder.eval(), encoder_view(family)


def bench_encoder_stack(spec: str, recipe: str, batch: int, seq: int, runs: int, warmup: int = 2) -> dict[str, Any]:
    """``autolite bench`` on an encoder stack: FP32 eager vs the recipe, interleaved (``compare``)."""
    recipe = load_recipe(recipe)
    baseline, tokenizer, family = encoder_stack(spec)
    calib = load_texts(None, split="calib")
    ctx = PassContext(family=family, tokenizer=tokenizer, calib=calib.texts, labels=calib.labels, shape=(batch, seq))
    candidate = compress(copy.deepcopy(baseline), recipe, tokenizer=tokenizer, family=family, ctx=ctx)
    result = compare(baseline, candidate, tokenizer, family, batch=batch, seq=seq, runs=runs, warmup=warmup,
                     data=load_texts(None, split="heldout"))
    result.update(model=spec, family=family.name, recipe=recipe.to_dict(), notes=ctx.notes,
                  machine=probe().to_dict(), autolite_version=autolite.__version__,
                  timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return result


def render() -> None:
    """docs/BENCHMARKS.md: the original's tables, then every case, then the sections other scripts wrote."""
    results = bench_results()
    lines = [
        "# Benchmarks", "",
        "Generated by `make bench` (`python benchmarks/run_all.py`, then `python benchmarks/make_docs.py`) from "
        "the JSON in `benchmarks/results/`; do not edit above the end marker. Every speed-up is measured in one "
        "process against FP32 eager PyTorch on the same inputs (interleaved, medians after warm-up), on the "
        "machine named in its row: rows from different machines are not comparable with each other.", "",
        *tables.e2e_table(results), *tables.precision_table(results),
        *tables.technique_table(_read(RESULTS / "optimize" / "fortunes.json"),
                                {p.stem: json.loads(p.read_text()) for p in DYNAMIC if p.exists()}),
        *tables.batching_table(_read(RESULTS / "serve" / "serve_batching.json")),
        *tables.energy_table(results), *case_table(results)]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines + ["", TABLE_END]) + _hand_written_tail())
    print(f"wrote {DOC}")


def bench_results() -> dict[str, dict[str, Any]]:
    """The cases' JSON by name (other scripts' JSON in the same folder, without a baseline, is skipped)."""
    loaded = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    return {name: data for name, data in loaded.items() if "baseline" in data and "candidate" in data}


def case_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """One row per `run_all.py` case."""
    lines = ["## Every case", "",
             "| case | model | recipe | batch x seq | FP32 eager ms | candidate ms | speed-up | fidelity vs FP32 | "
             "machine, load | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, data in results.items():
        fid = data["fidelity"]
        quality = (f"cosine {fid['cosine']:.5f}" if "cosine" in fid else
                   f"ppl {fid.get('perplexity_rel_change', 0) * 100:+.2f}%" if "perplexity" in fid else "-")
        lines.append(f"| {name} | {data['model']} | {data['recipe']['name']} | {data['batch']}x{data['seq']} | "
                     f"{data['baseline']['median_ms']:.1f} | {data['candidate']['median_ms']:.1f} | "
                     f"**{data['speedup']:.2f}x** | {quality} | {tables.machine_name(data['machine'], data['threads'])}; "
                     f"{tables.load_text(data)} | {'; '.join(data.get('notes', [])) or '-'} |")
    return lines


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _hand_written_tail() -> str:
    """Sections written by the other benchmark scripts below the generated table are kept."""
    old = DOC.read_text() if DOC.exists() else ""
    return old.split(TABLE_END, 1)[1] if TABLE_END in old else "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--render", action="store_true", help="only render docs/BENCHMARKS.md")
    parser.add_argument("--encoder-case", default="", help=argparse.SUPPRESS)  # run_case's own subprocess
    args = parser.parse_args()
    if args.encoder_case:
        write_json_atomic(RESULTS / f"{args.encoder_case}.json", bench_encoder_stack(*CASES[args.encoder_case]))
        return
    chosen = [] if args.render else [name for name in CASES if args.only in name]
    if not args.render and not chosen:
        raise SystemExit(f"no case name contains '{args.only}'; cases: {', '.join(CASES)}")
    failed = []
    for name in chosen:
        try:
            run_case(name, *CASES[name])
        except subprocess.CalledProcessError as exc:  # one broken case must not lose the others' hour
            print(f"case {name} failed (exit {exc.returncode}); its previous JSON, if any, is kept", flush=True)
            failed.append(name)
    render()
    if failed:
        raise SystemExit(f"failed cases: {', '.join(failed)}")


if __name__ == "__main__":
    main()
