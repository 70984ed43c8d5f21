"""`autolite optimize` on the real task (Debian fortunes categories, fine-tuned MiniLM) -> docs/OPTIMIZE.md.

1. Builds (or reuses) the task with ``benchmarks/task_fortunes.py``: train/val/test CSVs and the fine-tuned model.
2. Runs ``autolite.optimize`` on train+val (split inside into calibration and validation) with the untouched
   test CSV as ``--test``, ``--max-drop 1``, ``--objective latency`` at batch 32 x seq 128, for ``--minutes``.
3. In one process, times FP32 eager, the ``fast-dense`` preset alone and the pick interleaved (A B C A B C ...),
   and scores all three on the test split.
4. Writes ``benchmarks/results/optimize/fortunes.json`` (with the machine, its load average and CPU steal during
   the run) and renders ``docs/OPTIMIZE.md`` from it.

    .venv/bin/python benchmarks/optimize_bench.py --minutes 30     # the issue's budget
    .venv/bin/python benchmarks/optimize_bench.py --render         # only re-render docs/OPTIMIZE.md
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "optimize" / "fortunes.json"
BERT_RESULT = RESULT.with_name("bert_base.json")
DOC = ROOT / "docs" / "OPTIMIZE.md"
sys.path.insert(0, str(ROOT / "benchmarks"))


def cpu_times() -> tuple[float, float]:
    """(total, steal) jiffies of all CPUs from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields), fields[7] if len(fields) > 7 else 0.0


def task_files() -> tuple[Path, Path, dict]:
    """(model dir, data dir with train/val/test CSVs, FP32 record) of the fortunes task (built once, cached)."""
    import task_fortunes

    record = task_fortunes.build()
    return Path(record["model_dir"]), Path(record["data_dir"]), record


def compare(model_dir: Path, pick_dir: Path, data_dir: Path, batch: int, seq: int, runs: int) -> dict:
    """FP32 eager, fast-dense alone and the pick on the fortunes task: interleaved timing and test accuracy."""
    import autolite
    from autolite.search.data import labeled_file

    fp32 = autolite.load(model_dir)
    test = labeled_file(data_dir / "test.csv", fp32[0].config, "--test")
    train = labeled_file(data_dir / "train.csv", fp32[0].config, "train")  # fast-dense calibrates on training text
    return timed_three(fp32, pick_dir, train.texts, test, batch, seq, runs)


def timed_three(fp32: tuple, pick_dir: Path, calib: list[str], test, batch: int, seq: int, runs: int) -> dict:
    """FP32 eager, fast-dense alone (calibrated on ``calib``) and the pick timed A B C A B C in this process;
    scored on ``test`` when given."""
    import autolite
    from autolite.eval.bench import bench_inputs, forward_fn, interleaved, model_size
    from autolite.passes import PassContext
    from autolite.search.data import accuracy
    from autolite.search.trial import median_ms_joules

    model, tokenizer, family = fp32
    ctx = PassContext(family=family, tokenizer=tokenizer, calib=list(calib), shape=(batch, seq))
    models = {"fp32": model, "fast-dense": autolite.compress(model, "fast-dense", tokenizer=tokenizer, ctx=ctx),
              "pick": autolite.load(pick_dir)[0]}
    inputs = bench_inputs(tokenizer, family, batch, seq)
    samples = interleaved({n: forward_fn(m, family, inputs) for n, m in models.items()}, runs=runs, warmup=2)
    median, joules = median_ms_joules(samples, batch)
    out = {}
    for name, model in models.items():
        out[name] = {"ms": median[name], "test_acc": accuracy(model, tokenizer, test, seq) if test else None,
                     "size_mb": model_size(model)[0], "joules_per_inference": joules[name]}
    for name in out:
        out[name]["speedup"] = out["fp32"]["ms"] / out[name]["ms"]
    out["fast-dense"]["chose"] = [n for n in ctx.notes if n.startswith("fast-dense")][:1]
    out["energy_source"] = samples["pick"].energy_source
    return out


def bert_check(args: argparse.Namespace) -> dict:
    """The issue's second check: on ``random:bert-base`` (random weights, so accuracy means nothing and the budget
    is open) ``--objective latency`` picks a model at least as fast as the best single preset (``fast-dense``)."""
    import autolite
    from autolite.data import corpus
    from autolite.runtime.hardware import probe

    work = ROOT / "runs" / "optimize-bert-base"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    texts = corpus().texts[:160]
    with (work / "labeled.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *((t, i % 2) for i, t in enumerate(texts))])
    load0, started = os.getloadavg(), time.time()
    result = autolite.optimize("random:bert-base", str(work / "labeled.csv"), str(work / "out"), max_drop=100.0,
                               objective="latency", batch=args.batch, seq=args.seq, minutes=args.minutes,
                               recover_steps=args.recover_steps, progress=lambda m: print(f"  {m}", flush=True))
    search_s = time.time() - started
    same = timed_three(autolite.load("random:bert-base"), work / "out", texts, None, args.batch, args.seq, args.runs)
    return {"command": f"python benchmarks/optimize_bench.py --bert-check --minutes {args.minutes:g} --batch "
                       f"{args.batch} --seq {args.seq} --recover-steps {args.recover_steps}",
            "search_s": round(search_s, 1), "trials": len(result["trials"]), "pick": result["pick"]["label"],
            "load_average": {"start": load0, "end": os.getloadavg()}, "same_run": same,
            "niced": os.nice(0) > 0, "machine": probe().to_dict(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run(args: argparse.Namespace) -> dict:
    import autolite
    from autolite.runtime.hardware import probe

    from autolite.cache import cache_root

    work = ROOT / "runs" / "optimize-fortunes"
    shutil.rmtree(work, ignore_errors=True)  # a fresh search, not a resumed one
    shutil.rmtree(cache_root() / "optimize-speed", ignore_errors=True)  # it pays for every timing it uses
    model_dir, data_dir, record = task_files()
    test_csv = data_dir / "test.csv"
    total0, steal0 = cpu_times()
    load0, started = os.getloadavg(), time.time()
    # validation: val.csv (never trained on); calibration and recovery: train.csv (the fine-tuning set)
    result = autolite.optimize(str(model_dir), str(data_dir / "val.csv"), str(work / "out"), test=str(test_csv),
                               calib=str(data_dir / "train.csv"),
                               max_drop=1.0, objective="latency", batch=args.batch, seq=args.seq,
                               minutes=args.minutes, recover_steps=args.recover_steps,
                               backends=args.backends.split(",") if args.backends else None,
                               progress=lambda m: print(f"  {m}", flush=True))
    search_s = time.time() - started
    same_run = compare(model_dir, work / "out", data_dir, args.batch, args.seq, args.runs)
    total1, steal1 = cpu_times()
    return {
        "command": (f"python benchmarks/optimize_bench.py --minutes {args.minutes:g} --recover-steps "
                    f"{args.recover_steps}" + (f" --backends {args.backends}" if args.backends else "")),
        "task": {k: v for k, v in record.items() if k not in ("data_dir", "model_dir")},
        "minutes": args.minutes, "search_s": round(search_s, 1), "batch": args.batch, "seq": args.seq,
        "load_average": {"start": load0, "end": os.getloadavg()},
        "cpu_steal_share": round((steal1 - steal0) / max(total1 - total0, 1.0), 4),
        "optimize": {k: v for k, v in result.items() if k not in ("model", "data", "replay")},
        "same_run": same_run, "machine": probe().to_dict(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


HOW = """## How the search works

- **Space**: pruning ratios of layers, attention heads and FFN neurons (each cut followed by a distillation from
  the original model), the dynamic-inference passes registered under `autolite.dynamic` (found at run time), and
  one dense backend: every `fast-dense` candidate (ONNX Runtime and OpenVINO FP32/INT8, INT8 dynamic/static, BF16
  where native, `torch.compile`) unless `--backends` narrows it.
- **Sampler**: Optuna's multi-objective TPE (validation accuracy, speed-up), told the accuracy budget as a
  constraint. The first trials are the INT8 dense backends on the unpruned model (what `fast-dense` alone can
  pick), then five structural points on the first INT8 backend (OpenVINO INT8 when installed).
- **Cheap stages first**: (0) a structure is cut cheaply (no recovery, no refit) and timed under its backend
  before any distillation; when it cannot beat the fastest trial within budget it stops there (these timings are
  cached per machine, model and shape, so a structure is timed once); (1) accuracy on a small validation share;
  (2) speed against FP32 eager; (3) accuracy on the whole validation split.
- **Reuse**: a recovered structure is cached; one that lands within a point of the budget is queued under the
  three fastest dense backends, each such trial costing a conversion and a timing, not a distillation.
- **Honest scoring**: the test split is never seen by the search, calibration or recovery; the pick and FP32 are
  scored on it at the end, and speed is measured with FP32 eager interleaved in the same process. The benchmark
  starts with an empty speed cache.
"""


def render(data: dict) -> str:
    """docs/OPTIMIZE.md from the result JSON."""
    return "\n".join(["# `autolite optimize` on a real task", "",
                      "Generated by `benchmarks/optimize_bench.py` from `benchmarks/results/optimize/fortunes.json`; "
                      "do not edit.", "", *_setting(data), *_same_run(data), *_targets(data), HOW, *_trials(data),
                      *_bert(json.loads(BERT_RESULT.read_text()) if BERT_RESULT.is_file() else None)])


def _setting(data: dict) -> list[str]:
    trials, load = data["optimize"]["trials"], data["load_average"]
    states = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail")}
    early = sum(t["state"] == "pruned" and t.get("stage") == 0 for t in trials)
    if load["start"][0] == load["start"][0]:  # measured by run()
        shared = (f"load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end; CPU steal "
                  f"{100 * data['cpu_steal_share']:.1f}%")
    else:
        shared = f"load average {load['end'][0]:.1f} when collected; {data.get('note', 'not recorded during the run')}"
    return [
        f"Task: Debian `fortunes` categories ({len(data['task']['categories'])} classes), MiniLM-L6 fine-tuned by "
        f"`benchmarks/task_fortunes.py`. Command: `{data['command']}` (search {data['search_s'] / 60:.1f} min, "
        f"{len(trials)} trials: {states['complete']} complete, {states['pruned']} stopped by a cheap stage ({early} "
        f"before any recovery or conversion of the full model), {states['fail']} failed).", "",
        f"Machine: {data['machine'].get('cpu_model')}, {data['machine'].get('logical_cores')} logical cores, "
        f"{_quiet(data)} ({shared}). Speed-ups are ratios from one interleaved run "
        "(A B C A B C ..., medians), which keeps them fair under load; absolute milliseconds are not.", ""]


def _quiet(data: dict) -> str:
    """Whether other work loaded the machine: a load average above its core count at the start or the end."""
    load, cores = data["load_average"], data["machine"].get("logical_cores") or 1
    loads = [x for x in (load["start"][0], load["end"][0]) if x == x]
    return "quiet during the run" if loads and max(loads) <= cores else "shared with other work during the run"


def _same_run(data: dict) -> list[str]:
    same, opt = data["same_run"], data["optimize"]
    pick, fp32_test = opt["pick"], same["fp32"]["test_acc"]
    names = {"fp32": "FP32 eager", "fast-dense": same.get("dense_label", "`fast-dense` alone"), "pick": "the pick"}
    rows = [f"| {names[name]} | {same[name]['speedup']:.2f}x | {same[name]['ms']:.0f} | {_acc(same[name], fp32_test)} "
            f"| {_f(same[name]['size_mb'], '.1f')} | {_f(same[name]['joules_per_inference'], '.3f')} |"
            for name in ("fp32", "fast-dense", "pick")]
    return [f"## Same run: FP32 eager vs `fast-dense` alone vs the pick (batch {data['batch']} x seq {data['seq']})",
            "", "| model | speed-up | ms / batch | test accuracy % (vs FP32) | MiB | J / inference |",
            "|---|---|---|---|---|---|", *rows, "",
            f"The pick: `{pick['label']}` (trial {pick['trial']}); validation accuracy {pick['val_acc']:.2f}% vs FP32 "
            f"{opt['fp32']['val_acc']:.2f}%. `fast-dense`: {'; '.join(same['fast-dense']['chose']).split(':')[0]}.", "",
            f"Energy is {same['energy_source']}: {pick['energy']['note']}.", ""]


def _targets(data: dict) -> list[str]:
    same = data["same_run"]
    speedup, over_dense = same["pick"]["speedup"], same["pick"]["speedup"] / same["fast-dense"]["speedup"]
    drop = same["pick"]["test_acc"] - same["fp32"]["test_acc"]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return ["## Targets", "",
            f"- >= 5x FP32 eager at batch 32: **{speedup:.2f}x**, {verdict(speedup >= 5.0)}",
            f"- >= 1.5x `fast-dense` alone: **{over_dense:.2f}x**, {verdict(over_dense >= 1.5)}",
            f"- test accuracy within 1 point of FP32: **{drop:+.2f}**, {verdict(drop >= -1.0)}",
            f"- search budget: {data['minutes']:g} minutes"
            + (" (the issue asks for 30)" if data["minutes"] < 30 else ""),
            "", *_shortfall(data)]


def _shortfall(data: dict) -> list[str]:
    """What the fastest candidate over the budget was, in the data's own numbers."""
    opt = data["optimize"]
    lines = []
    chose = re.search(r"chose (\S+)", " ".join(data["same_run"]["fast-dense"].get("chose", [])))
    if chose and chose.group(1) not in opt["space"]["backends"]:
        lines += [f"`fast-dense` chose `{chose.group(1)}`, a backend this search's space did not include (it had "
                  f"{', '.join(opt['space']['backends'])}), so the pick cannot beat it here.", ""]
    budget = opt["fp32"]["val_acc"] - opt["max_drop"]
    over = [t for t in opt["trials"] if t["state"] == "complete" and t["val_acc"] < budget]
    if not over:
        return lines
    fastest = max(over, key=lambda t: t["speedup"])
    lost = opt["fp32"]["val_acc"] - fastest["val_acc"]
    pruned = [t for t in over if any(t["params"].get(k) for k in ("layers", "heads", "ffn"))]
    kept = [t for t in opt["trials"] if t["state"] == "complete" and t["val_acc"] >= budget
            and any(t["params"].get(k) for k in ("layers", "heads", "ffn"))]
    if pruned and not kept:
        best = max(pruned, key=lambda t: t["val_acc"])
        lines += [f"No pruned structure kept validation accuracy within budget: the closest, `{best['label']}` "
                  f"({best['speedup']:.2f}x in its trial), lost {opt['fp32']['val_acc'] - best['val_acc']:.2f} "
                  f"points after {opt['space']['recover_steps']} distillation steps.", ""]
    return lines + [
        f"The fastest candidate the search measured, `{fastest['label']}` ({fastest['speedup']:.2f}x in its trial), "
        f"lost {lost:.2f} points on validation (budget {opt['max_drop']:g}), so it was not picked; "
        f"{len(opt['trials'])} trials fit the budget on this machine (a structural trial prunes, distills and exports "
        "a model).", ""]


def _trials(data: dict) -> list[str]:
    rows = [f"| {t['number']} | {t.get('label', '')} | {t['state']} | {_f(t.get('screen_speedup'))} "
            f"| {_f(t.get('small_acc'))} | {_f(t.get('val_acc'))} | {_f(t.get('speedup'))} "
            f"| {_f(t.get('seconds') or t.get('build_s'), '.0f')} | {(t.get('pruned') or t.get('error') or '')[:110]} |"
            for t in data["optimize"]["trials"]]
    return ["## Trials", "", "| trial | candidate | state | speed-up before recovery | proxy acc | val acc "
            "| speed-up (trial) | s | why stopped |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
            "Per-trial speed-ups come from 3 interleaved runs inside the search (2 for the screen before recovery) and "
            "are noisier than the table above. `s`: the trial's seconds (n/m where a cached screen took none).", ""]


def _bert(data: dict | None) -> list[str]:
    """The random:bert-base check: the pick vs the best single preset, one interleaved run."""
    if data is None:
        return []
    same, load = data["same_run"], data["load_average"]
    ratio = same["pick"]["speedup"] / same["fast-dense"]["speedup"]
    rows = [f"| {name} | {same[key]['speedup']:.2f}x | {same[key]['ms']:.0f} |"
            for key, name in (("fp32", "FP32 eager"), ("fast-dense", "`fast-dense` alone (best single preset)"),
                              ("pick", f"the pick: `{data['pick']}`"))]
    return ["## `random:bert-base`, `--objective latency`", "",
            f"Command: `{data['command']}` ({data['trials']} trial(s) in {data['search_s'] / 60:.1f} min; random "
            "weights, so accuracy means nothing and the budget is open). Load average "
            f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end"
            + (", run at the lowest CPU priority while other benchmarks ran: the ratios come from one interleaved "
               "run, the milliseconds do not mean much" if data.get("niced") else "") + ".", "",
            "| model | speed-up | ms / batch |", "|---|---|---|", *rows, "",
            *_dense_choice(same["fast-dense"].get("chose", [])),
            f"The pick is **{ratio:.2f}x** `fast-dense` alone: "
            f"{'at least as fast, as the issue asks' if ratio >= 0.97 else 'slower, NOT as the issue asks'} "
            "(within 3% counts as a tie: timing noise).", ""]


def _dense_choice(chose: list[str]) -> list[str]:
    """What fast-dense chose, and how many of its candidates its own time budget left unmeasured."""
    if not chose:
        return []
    head, _, detail = chose[0].partition("]: ")
    unmeasured = detail.count("search budget")
    return [f"{head.split(' [')[0]}"
            + (f"; its own search budget ran out before {unmeasured} of its candidates were measured, so the "
               "preset's choice here is weaker than on a quiet machine" if unmeasured else "") + ".", ""]


def _f(value, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/m"


def _acc(row: dict, reference: float) -> str:
    acc = row.get("test_acc")
    return "n/m" if acc is None else f"{acc:.2f} ({acc - reference:+.2f})"


def collect(args: argparse.Namespace) -> dict:
    """The result JSON from a finished search's optimize.json alone (when the separate fast-dense comparison could
    not run): the dense row is then the best dense trial, timed in the search's own final interleaved run."""
    import task_fortunes
    from autolite.runtime.hardware import probe

    record = json.loads((task_fortunes.task_dir() / "fp32.json").read_text())
    opt = json.loads((ROOT / "runs" / "optimize-fortunes" / "out" / "optimize.json").read_text())
    pick, dense = opt["pick"], opt["pick"].get("best_dense") or {}
    energy = pick["energy"]
    same = {"fp32": {"ms": pick["fp32_ms"], "test_acc": opt["fp32"]["test_acc"], "size_mb": pick["fp32_size_mb"],
                     "joules_per_inference": energy["fp32_joules_per_inference"], "speedup": 1.0},
            "pick": {"ms": pick["ms"], "test_acc": pick["test_acc"], "size_mb": pick["size_mb"],
                     "joules_per_inference": energy["joules_per_inference"], "speedup": pick["speedup"]},
            "fast-dense": {"ms": dense.get("ms", pick["ms"]), "speedup": dense.get("speedup", pick["speedup"]),
                           "test_acc": None, "size_mb": None, "joules_per_inference": None,
                           "chose": [f"(not run: best dense trial of the search, {dense.get('label', 'the pick')})"]},
            "energy_source": energy["source"], "dense_label": f"best dense trial ({dense.get('label', 'the pick')})"}
    seconds = sum(t.get("seconds") or t.get("build_s") or 0 for t in opt["trials"])
    load = {"start": [float("nan")], "end": os.getloadavg()}
    steal = float("nan")
    if args.compare:  # FP32 / fast-dense / pick timed again, interleaved, after the search
        total0, steal0 = cpu_times()
        load["start"] = os.getloadavg()
        model_dir, data_dir, _ = task_files()
        same = compare(model_dir, ROOT / "runs" / "optimize-fortunes" / "out", data_dir, opt["batch"], opt["seq"],
                       args.runs)
        total1, steal1 = cpu_times()
        load["end"], steal = os.getloadavg(), round((steal1 - steal0) / max(total1 - total0, 1.0), 4)
    return {"command": f"python benchmarks/optimize_bench.py --collect{' --compare' if args.compare else ''} "
                       f"(search: --minutes {args.minutes:g} "
                       f"--recover-steps {args.recover_steps} --backends {args.backends})",
            "task": {k: v for k, v in record.items() if k not in ("data_dir", "model_dir")},
            "minutes": args.minutes, "search_s": seconds,
            "batch": opt["batch"], "seq": opt["seq"], "load_average": load,
            "cpu_steal_share": steal, "note": args.note,
            "optimize": {k: v for k, v in opt.items() if k not in ("model", "data")},
            "same_run": same, "machine": probe().to_dict(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--recover-steps", type=int, default=200)
    parser.add_argument("--backends", default=None, help="comma-separated dense candidates (default: all native)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--render", action="store_true", help="only re-render docs/OPTIMIZE.md from the JSON")
    parser.add_argument("--collect", action="store_true", help="build the JSON from a finished search's optimize.json")
    parser.add_argument("--compare", action="store_true", help="with --collect: time FP32 / fast-dense / pick again")
    parser.add_argument("--note", default=None, help="a note on the machine's load to keep with a --collect result")
    parser.add_argument("--bert-check", action="store_true",
                        help="the random:bert-base check instead (-> bert_base.json; run it with small --minutes)")
    args = parser.parse_args(argv)
    if args.bert_check:
        write_result(BERT_RESULT, bert_check(args))
    elif not args.render:
        write_result(RESULT, collect(args) if args.collect else run(args))
    DOC.write_text(render(json.loads(RESULT.read_text())))
    print(f"wrote {DOC}")
    return 0


def write_result(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=str)
    for local, shown in ((str(ROOT), "."), (str(Path.home()), "~")):  # no paths of this machine in the repo
        text = text.replace(local, shown)
    path.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
