"""Dynamic inference on the real fortunes task: speed-up vs the same model's dense path and vs FP32 eager,
test accuracy, and held-out embedding cosine, per technique; then ``docs/DYNAMIC.md`` and a plot from the JSON.

    python benchmarks/task_fortunes.py                       # once: the task and its fine-tuned MiniLM (cached)
    python benchmarks/dynamic_bench.py                       # every registered technique
    python benchmarks/dynamic_bench.py --only token-drop     # one technique (others' JSON files are kept)
    python benchmarks/dynamic_bench.py --docs                # only regenerate docs/DYNAMIC.md and the plot

Adding a technique: write ``def my_rows(task: Task) -> list[Candidate]`` and decorate it with
``@technique("name")``. Each Candidate is a dynamic model plus its dense twin at the same precision
(``kind`` "classifier": on the task model; "embedding": on the bundled MiniLM embedder). The harness times
FP32 eager, dense and dynamic interleaved (A B C A B C, medians after warm-up; ``autolite.eval.bench``) at
b32x128 and b1x128 on rows of real test-split text (consecutive test texts joined to 128 tokens, [CLS] first),
measures test accuracy (classifier) or held-out corpus cosine against FP32 (embedding) on length-sorted batches
of 16 (so a dynamic method meets real tokens, not padding), and writes ``results/dynamic/<name>.json``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import psutil
import torch

import autolite
from autolite.data import TextData, corpus
from autolite.errors import RecipeError
from autolite.eval import metrics
from autolite.eval.bench import forward_fn, interleaved
from autolite.eval.forward import run_model, tokenize
from autolite.passes import PassContext
from autolite.runtime.hardware import probe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_fortunes  # noqa: E402  (the task builder beside this script)

log = logging.getLogger("dynamic_bench")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "dynamic"
SHAPES = [(32, 128), (1, 128)]


@dataclasses.dataclass
class Task:
    """The fortunes classifier (FP32), its data splits, and the bundled MiniLM embedder with corpus splits."""

    model: torch.nn.Module
    tokenizer: Any
    family: Any
    train: TextData
    val: TextData
    test: TextData
    embedder: torch.nn.Module
    calib_texts: list[str]
    heldout_texts: list[str]
    failed: list[dict] = dataclasses.field(default_factory=list)  # rows a technique could not build, with why


@dataclasses.dataclass
class Candidate:
    """One row: ``model`` (dynamic) and ``dense`` (the same model at the same precision without the technique)."""

    name: str
    model: torch.nn.Module
    dense: torch.nn.Module
    kind: str = "classifier"
    settings: dict = dataclasses.field(default_factory=dict)


TECHNIQUES: dict[str, Callable[[Task], Iterable[Candidate]]] = {}  # a list or a generator of rows


def technique(name: str) -> Callable:
    """Register ``fn(task) -> list[Candidate]`` under ``name``."""
    def register(fn: Callable[[Task], list[Candidate]]) -> Callable[[Task], list[Candidate]]:
        TECHNIQUES[name] = fn
        return fn
    return register


def load_task() -> Task:
    record = task_fortunes.build()  # cached after the first run
    model, tok, family = autolite.load(record["model_dir"])
    data = {s: task_fortunes.read_labeled(Path(record["data_dir"]) / f"{s}.csv", model.config.label2id)
            for s in ("train", "val", "test")}
    embedder, _, _ = autolite.load("minilm")
    return Task(model, tok, family, data["train"], data["val"], data["test"], embedder,
                corpus("calib").texts, corpus("heldout").texts)


def text_rows(tokenizer: Any, texts: list[str], batch: int, seq: int) -> dict[str, torch.Tensor]:
    """``batch x seq`` ids: [CLS] + consecutive texts' tokens + [SEP] per row (real text, no padding)."""
    ids = [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    rows, step = [], seq - 2
    for r in range(batch):
        start = (r * step) % max(1, len(ids) - step)
        rows.append([tokenizer.cls_token_id, *ids[start:start + step], tokenizer.sep_token_id])
    input_ids = torch.tensor(rows)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids)}


def time_models(models: dict[str, torch.nn.Module], task: Task, runs: int, warmup: int) -> dict[str, Any]:
    """Median latency of each model per shape, interleaved; speed-ups of 'dynamic' over 'dense' and 'fp32'."""
    out = {}
    for batch, seq in SHAPES:
        inputs = text_rows(task.tokenizer, task.test.texts, batch, seq)
        unique = {name: m for name, m in models.items() if name == "fp32" or m is not models["fp32"]}
        fns = {name: forward_fn(m, task.family, inputs) for name, m in unique.items()}
        samples = interleaved(fns, runs=runs if batch > 1 else runs * 3, warmup=warmup)
        med = {name: statistics.median(samples[name if name in unique else "fp32"]) for name in models}
        out[f"b{batch}x{seq}"] = {"median_ms": {k: round(v, 3) for k, v in med.items()},
                                  "speedup_vs_dense": round(med["dense"] / med["dynamic"], 3),
                                  "speedup_vs_fp32": round(med["fp32"] / med["dynamic"], 3),
                                  "dense_vs_fp32": round(med["fp32"] / med["dense"], 3)}
    return out


@torch.no_grad()
def outputs_sorted(model: torch.nn.Module, task: Task, texts: list[str], batch_size: int = 16) -> list:
    """Run ``model`` over ``texts`` in length-sorted batches; returns (indices, Outputs) per batch."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result = []
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        result.append((idx, run_model(model, task.family, tokenize(task.tokenizer, [texts[i] for i in idx]))))
    return result


def test_accuracy(model: torch.nn.Module, task: Task) -> float:
    return split_accuracy(model, task, task.test)


def split_accuracy(model: torch.nn.Module, task: Task, data: TextData) -> float:
    labels = torch.tensor(data.labels)
    correct = sum(metrics.accuracy_matches(out.logits, labels[idx])[0] for idx, out in
                  outputs_sorted(model, task, data.texts))
    return correct / len(data)


def heldout_cosine(model: torch.nn.Module, reference: torch.nn.Module, task: Task) -> float:
    ours, ref = outputs_sorted(model, task, task.heldout_texts), outputs_sorted(reference, task, task.heldout_texts)
    total = sum(float(metrics.cosine_per_row(a.embeddings, b.embeddings).sum()) for (_, a), (_, b) in zip(ours, ref))
    return total / len(task.heldout_texts)


def measure(candidate: Candidate, task: Task, runs: int, warmup: int) -> dict[str, Any]:
    fp32 = task.model if candidate.kind == "classifier" else task.embedder
    row: dict[str, Any] = {"name": candidate.name, "kind": candidate.kind, "settings": candidate.settings}
    row["timing"] = time_models({"fp32": fp32, "dense": candidate.dense, "dynamic": candidate.model}, task,
                                runs, warmup)
    if candidate.kind == "classifier":
        row["test_accuracy"] = test_accuracy(candidate.model, task)
        row["test_accuracy_dense"] = test_accuracy(candidate.dense, task)
    else:
        row["heldout_cosine"] = heldout_cosine(candidate.model, fp32, task)
        row["heldout_cosine_dense"] = heldout_cosine(candidate.dense, fp32, task)
    log.info("%s: %s", candidate.name, json.dumps({k: v for k, v in row.items() if k != "settings"}))
    return row


def machine() -> dict[str, Any]:
    """The machine and how loaded it was (2 shared cores: other sessions' work shows as load and steal)."""
    times = psutil.cpu_times_percent(interval=1.0)
    info = probe()
    isa = ", ".join(k for k in ("avx512_vnni", "avx512_bf16", "amx_int8") if info.isa.get(k))
    return {"cpu": f"{info.cpu_model} ({isa})", "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()], "steal_percent": getattr(times, "steal", None),
            "shared": True}


# ---------------------------------------------------------------- token dropping (issue 15 item 1)

def _int8(model: torch.nn.Module) -> torch.nn.Module:
    return autolite.compress(copy.deepcopy(model), "int8-dynamic")


def _token_drop(model: torch.nn.Module, task: Task, data: TextData, **options: Any) -> torch.nn.Module:
    """``model`` with the token-drop pass applied (search and/or recovery on ``data``)."""
    from autolite.dynamic.token_drop import TokenDrop

    ctx = PassContext(family=task.family, tokenizer=task.tokenizer, calib=data.texts, labels=data.labels)
    return autolite.compress(copy.deepcopy(model), [TokenDrop(**options)], ctx=ctx, tokenizer=task.tokenizer,
                             family=task.family)


def _searched(model: torch.nn.Module, task: Task, data: TextData, **options: Any) -> torch.nn.Module | str:
    """The searched model, or the one-line reason no schedule met the bound."""
    try:
        return _token_drop(model, task, data, starts=[2, 3, 4], rates=[0.5, 0.7, 0.9], search_batch=32, **options)
    except RecipeError as exc:
        return str(exc)


FIXED_SCHEDULE = [1.0, 1.0, 0.7, 0.49, 0.343, 0.2401]  # geometric from layer 2 at 0.7: 63% of the token-layers
RECOVER_STEPS = 40


def _rows(name: str, model: torch.nn.Module, task: Task, **extra: Any) -> Iterator[Candidate]:
    """FP32 and INT8 rows of a token-drop classifier (dense twins: the task model, FP32 and INT8)."""
    settings = dict(model.config.token_drop, val_accuracy=split_accuracy(model, task, task.val), **extra)
    yield Candidate(f"{name} fp32", model, task.model, settings=settings)
    yield Candidate(f"{name} int8", _int8(model), _int8(task.model), settings=settings)


@technique("token-drop")
def token_drop_rows(task: Task) -> Iterator[Candidate]:
    """Classifier: the fixed FIXED_SCHEDULE as a speed reference, and the schedule searched on val to <= 1 point
    (no training); both with [CLS]-attention scores. Embeddings: searched to >= 0.98 cosine on the corpus
    calibration split, both output modes (restore vs kept-mean)."""
    yield from _rows("token-drop fixed 63%", _token_drop(task.model, task, task.val, schedule=FIXED_SCHEDULE,
                                                         score="cls"), task)
    searched = _searched(task.model, task, task.val, max_drop=1.0, score="cls")
    if isinstance(searched, str):
        task.failed.append({"name": "token-drop searched", "reason": searched})
    else:
        yield from _rows("token-drop searched", searched, task)
    for output in ("kept-mean", "restore"):
        emb = _searched(task.embedder, task, TextData(task.calib_texts), min_cosine=0.98, output=output)
        if isinstance(emb, str):
            task.failed.append({"name": f"token-drop embeddings ({output})", "reason": emb})
            continue
        yield Candidate(f"token-drop embeddings ({output})", emb, task.embedder, kind="embedding",
                        settings=dict(emb.config.token_drop))


@technique("token-drop-distill")
def token_drop_distill_rows(task: Task) -> Iterator[Candidate]:
    """FIXED_SCHEDULE, then RECOVER_STEPS of distillation from the dense model (KD + CE) on the train split."""
    model = _token_drop(task.model, task, task.train, schedule=FIXED_SCHEDULE, score="cls",
                        recover_steps=RECOVER_STEPS)
    yield from _rows("token-drop fixed 63% + distill", model, task, recover_steps=RECOVER_STEPS)


# ---------------------------------------------------------------- early exit, routing, head selection (items 2-4)
# Built in dynamic_adaptive.py (calibrated on train + val); it also measures them on the test texts as they come.

import dynamic_adaptive  # noqa: E402


@technique("early-exit")
def early_exit_rows(task: Task) -> list[Candidate]:
    return [Candidate(n, m, task.model, settings=s) for n, (m, s) in dynamic_adaptive.early_exit_models(task).items()]


@technique("route")
def route_rows(task: Task) -> list[Candidate]:
    return [Candidate(n, m, task.model, settings=s) for n, (m, s) in dynamic_adaptive.route_units(task).items()]


@technique("combined")
def combined_rows(task: Task) -> list[Candidate]:
    return [Candidate(n, m, task.model, settings=s) for n, (m, s) in dynamic_adaptive.combined_units(task).items()]


@technique("head-select")
def head_select_rows(task: Task) -> list[Candidate]:
    return [Candidate(n, m, task.model, settings=s) for n, (m, s) in dynamic_adaptive.head_select_models(task).items()]


# ---------------------------------------------------------------- the docs (generated from the JSON)

def load_results(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json")) if p.name != "task_fortunes.json"]


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| technique | row | b32x128 vs dense | b32x128 vs FP32 | b1x128 vs dense | b1x128 vs FP32 | "
             "test acc (dense -> dynamic) | held-out cosine (dense -> dynamic) |", "|---" * 8 + "|"]
    for result in results:
        for row in result["rows"]:
            t32, t1 = row["timing"]["b32x128"], row["timing"]["b1x128"]
            acc = (f"{100 * row['test_accuracy_dense']:.1f} -> {100 * row['test_accuracy']:.1f}"
                   if "test_accuracy" in row else "")
            cos = f"{row['heldout_cosine_dense']:.4f} -> {row['heldout_cosine']:.4f}" if "heldout_cosine" in row else ""
            lines.append(f"| {result['technique']} | {row['name']} | {t32['speedup_vs_dense']:.2f}x | "
                         f"{t32['speedup_vs_fp32']:.2f}x | {t1['speedup_vs_dense']:.2f}x | {t1['speedup_vs_fp32']:.2f}x | "
                         f"{acc} | {cos} |")
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Speed-up vs FP32 eager (b32x128) against test accuracy (classifiers) / held-out cosine (embeddings)."""
    import matplotlib  # optional: only the docs need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_cos) = plt.subplots(1, 2, figsize=(11, 4.2))
    for result in results:
        for kind, ax, key in (("classifier", ax_acc, "test_accuracy"), ("embedding", ax_cos, "heldout_cosine")):
            rows = [r for r in result["rows"] if r["kind"] == kind]
            if not rows:
                continue
            xs = [r["timing"]["b32x128"]["speedup_vs_fp32"] for r in rows]
            ys = [100 * r[key] if kind == "classifier" else r[key] for r in rows]
            ax.scatter(xs, ys, label=result["technique"])
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fp32 = next((r["fp32_test_accuracy"] for r in results), None)
    if fp32 is not None:
        ax_acc.axhline(100 * fp32, color="grey", lw=0.8, ls="--", label="FP32 eager")
        ax_acc.axhline(100 * fp32 - 1, color="red", lw=0.8, ls=":", label="FP32 - 1 point")
        ax_acc.scatter([1.0], [100 * fp32], marker="x", color="black")
    ax_cos.axhline(0.98, color="red", lw=0.8, ls=":", label="0.98 target")
    ax_acc.set(xlabel="speed-up vs FP32 eager (b32x128)", ylabel="fortunes test accuracy (%)", title="classifier")
    ax_cos.set(xlabel="speed-up vs FP32 eager (b32x128)", ylabel="held-out cosine to FP32", title="MiniLM embeddings")
    for ax in (ax_acc, ax_cos):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(directory: Path, docs: Path) -> None:
    """docs/DYNAMIC.md and docs/dynamic_tradeoff.png from the JSON results."""
    results = load_results(directory)
    task = json.loads((directory / "task_fortunes.json").read_text())
    plot(results, docs / "dynamic_tradeoff.png")
    lines = ["# Dynamic inference: measured on a real task", "",
             "Generated by `python benchmarks/dynamic_bench.py` from `benchmarks/results/dynamic/*.json`; do not edit.",
             "", "## The task", "",
             f"Debian `fortunes` categories ({', '.join(task['categories'])}); {task['sizes']['train']} train / "
             f"{task['sizes']['val']} val / {task['sizes']['test']} test texts (seeded, balanced); MiniLM-L6 "
             f"fine-tuned by `python benchmarks/task_fortunes.py`: FP32 val {100 * task['fp32_val_accuracy']:.1f}%, "
             f"test {100 * task['fp32_test_accuracy']:.1f}%. Searches and calibration see train/val only.", "",
             "## Results", "", *table(results), "", "![speed-up vs accuracy](dynamic_tradeoff.png)", "",
             "Speed-ups: medians of interleaved runs (FP32 eager, the same model's dense path and the dynamic model "
             "alternating in one process) on rows of real test text; accuracy on the test split in length-sorted "
             "batches of 16 (a dynamic method meets real tokens, not padding); cosine: mean-pooled embeddings "
             "against FP32 MiniLM on the embedded corpus' held-out split.", "", *TOKEN_DROP_TEXT]
    lines += dynamic_adaptive.doc_sections()
    lines += targets(results) + missing(results) + notes(results)
    out = docs / "DYNAMIC.md"
    out.with_suffix(".tmp").write_text("\n".join(lines) + "\n")
    out.with_suffix(".tmp").replace(out)


TOKEN_DROP_TEXT = [
    "## Token dropping (`token-drop`)", "",
    "After the layers where the schedule falls, each token is scored by the attention it receives from the real "
    "tokens (summed over heads and queries, from that layer's explicit attention probabilities); `[CLS]` and the "
    "final `[SEP]` are always kept and padding ranks last. The kept tokens are gathered into a `(B, k, H)` tensor, "
    "so later layers really compute on `k` tokens (a test hooks the FFN input lengths). Shapes are static within "
    "a batch: it composes with INT8 dynamic linears and `torch.compile` (tested); it does not run under the ONNX "
    "Runtime/OpenVINO passes (the TorchScript export would freeze the keep counts to the traced length: a one-line "
    "error says so). `restore` output puts each dropped token's last state back; `kept-mean` fills dropped positions "
    "with the mean of the kept ones, so mean pooling sees only kept tokens (the results table compares their cosine "
    "when token-drop was measured).", ""]

# technique -> (baseline, speed-up) on the fixed b32x128/b1x128 rows; early exit, routing and the combined row are
# judged on the test texts as they come (dynamic_adaptive's sections), where length and exits can act
TARGETS = {"token-drop": ("dense", 1.6), "token-drop-distill": ("dense", 1.6)}


def targets(results: list[dict[str, Any]]) -> list[str]:
    """Each row against its issue target: speed-up at b32x128 and b1x128 within 1 accuracy point / 0.98 cosine."""
    lines = ["## Against the targets (fixed b32x128 / b1x128 rows)", "",
             "| row | target | reached (b32 / b1) | accuracy / cosine | met |", "|---|---|---|---|---|"]
    if not any(r["technique"] in TARGETS for r in results):
        return []
    for result in results:
        if result["technique"] not in TARGETS:
            continue
        base, goal = TARGETS[result["technique"]]
        for row in result["rows"]:
            speeds = [row["timing"][s][f"speedup_vs_{base}"] for s in ("b32x128", "b1x128")]
            if "test_accuracy" in row:
                ref = row["test_accuracy_dense"] if base == "dense" else result["fp32_test_accuracy"]
                drop = 100 * (ref - row["test_accuracy"])
                quality, ok = f"accuracy {drop:.1f} points below {base}", drop <= 1.0
            else:
                quality, ok = f"cosine {row['heldout_cosine']:.4f}", row["heldout_cosine"] >= 0.98
            met = ok and min(speeds) >= goal
            lines.append(f"| {row['name']} | >= {goal}x vs {base}, <= 1 point / >= 0.98 cosine | "
                         f"{speeds[0]:.2f}x / {speeds[1]:.2f}x | {quality} | {'yes' if met else '**no**'} |")
    return lines + [""]


def missing(results: list[dict[str, Any]]) -> list[str]:
    """The registered techniques without a result (not measured in the run the docs come from)."""
    absent = sorted(set(TECHNIQUES) - {r["technique"] for r in results})
    if not absent:
        return []
    return ["## Not measured in this run", "", f"{', '.join(absent)}: no result on file (run "
            f"`python benchmarks/dynamic_bench.py {' '.join('--only ' + n for n in absent)}`).", ""]


def notes(results: list[dict[str, Any]]) -> list[str]:
    """Per-result settings and the machine, as measured."""
    lines = ["## Settings and machines", ""]
    for result in results:
        m = result["machine"]
        lines.append(f"- **{result['technique']}** (`{result['command']}`, {result['runs']} interleaved runs, "
                     f"{result['seconds']} s): {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
                     f"({m['torch_threads']} threads), load average {m['load_average']}, steal {m['steal_percent']}%"
                     f"{' (machine shared with other work)' if m.get('shared') else ''}.")
        for row in result["rows"]:
            lines.append(f"  - {row['name']}: `{json.dumps(row['settings'])}`")
        for row in result.get("failed", []):
            lines.append(f"  - {row['name']}: not built: {row['reason']}")
    return lines


def run(names: list[str], runs: int, warmup: int) -> None:
    """Measure each technique's rows; its JSON is rewritten after every row (a cut-short run keeps what it measured)."""
    task = load_task()
    fp32_acc = test_accuracy(task.model, task)
    for name in names:
        started = time.time()
        task.failed.clear()
        result = {"technique": name, "fp32_test_accuracy": fp32_acc, "rows": [], "failed": task.failed,
                  "runs": runs, "warmup": warmup, "command": f"python benchmarks/dynamic_bench.py --only {name}"}
        for candidate in TECHNIQUES[name](task):
            result["rows"].append(measure(candidate, task, runs, warmup))
            result.update(machine=machine(), seconds=round(time.time() - started, 1))
            write_json(RESULTS / f"{name}.json", result)
        result.update(machine=machine(), seconds=round(time.time() - started, 1), complete=True)
        write_json(RESULTS / f"{name}.json", result)
        dynamic_adaptive.after(name, task, runs)  # early-exit/route/head-select: natural-length batches too


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(TECHNIQUES), help="technique(s) to run")
    parser.add_argument("--runs", type=int, default=4, help="timed b32 runs per model (b1: 3x as many)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine two threads mostly wait for each other)")
    parser.add_argument("--docs", action="store_true", help="only regenerate docs/DYNAMIC.md from the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if not args.docs:
        run(args.only or sorted(TECHNIQUES), args.runs, args.warmup)
    write_docs(RESULTS, ROOT / "docs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
