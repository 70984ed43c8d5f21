"""The end of a search: pick, re-measure honestly (test split, same-run speed), save everything atomically."""
from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

import autolite
from autolite.errors import AutoliteError
from autolite.eval.bench import forward_fn, interleaved, model_size
from autolite.export.hf import write_model_files
from autolite.io import atomic_dir
from autolite.report.html import write_html, write_markdown
from autolite.runtime.hardware import probe
from autolite.search.data import accuracy
from autolite.search.insight import layer_latency, layer_sensitivity
from autolite.search.space import describe, is_dense
from autolite.search.study import trials_table
from autolite.search.trial import median_ms_joules

log = logging.getLogger(__name__)


def choose(study, ref_val: float, max_drop: float, objective: str) -> tuple[Any, Any]:
    """(the pick or None, the best dense-only trial or None) among trials within budget on validation."""
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    feasible = [t for t in done if t.user_attrs["val_acc"] >= ref_val - max_drop]
    if not feasible:
        if not done:
            raise AutoliteError("no trial finished (interrupted, or every candidate failed or was pruned); "
                                "nothing saved: rerun with more --minutes (the journal keeps what was measured)")
        closest = max(done, key=lambda t: t.user_attrs["val_acc"])
        a = closest.user_attrs
        raise AutoliteError(
            f"no candidate kept validation accuracy within {max_drop:g} points of FP32 ({ref_val:.2f}%): the closest "
            f"was '{a['label']}' at {a['val_acc']:.2f}% ({ref_val - a['val_acc']:.2f} points lower, "
            f"{a['speedup']:.2f}x); "
            "nothing saved: raise --max-drop or give more --minutes")
    key = (lambda t: (t.user_attrs["score"], t.user_attrs["val_acc"]))
    dense = [t for t in feasible if is_dense(t.user_attrs["params"])]
    return max(feasible, key=key), (max(dense, key=key) if dense else None)


def finish(study, worker, setup, splits, state: dict[str, Any], opts, interrupted: bool,
           say: Callable[[str], None]) -> dict[str, Any]:
    """Pick, measure on test and in one interleaved run, write the result files; returns optimize.json."""
    pick, dense = choose(study, state["ref"]["val"], opts.max_drop, opts.objective)
    say(f"pick: trial {pick.number} ({pick.user_attrs['label']}); re-measuring on the test split")
    model, recipe, notes = worker.build(pick.user_attrs["params"])
    final = measure(worker, model, pick.user_attrs["params"], dense, splits, setup)
    sensitivity = layer_sensitivity(worker.original, worker.tokenizer, worker.family, splits.small_val, setup.seq,
                                     state["ref"]["small"])
    latency = layer_latency({"FP32 eager": worker.original, "pick": model}, worker.family, worker.inputs)
    result = {
        "model": opts.model, "data": opts.data, "test_source": state["test_source"], "objective": opts.objective,
        "max_drop": opts.max_drop, "batch": setup.batch, "seq": setup.seq, "interrupted": interrupted,
        "fp32": {"val_acc": state["ref"]["val"], "test_acc": final.pop("fp32_test_acc")},
        "pick": dict(final, trial=pick.number, label=describe(pick.user_attrs["params"]),
                     params=pick.user_attrs["params"], val_acc=pick.user_attrs["val_acc"], recipe=recipe, notes=notes),
        "space": state["space"], "trials": trials_table(study), "sensitivity": sensitivity, "layer_latency": latency,
        "machine": _machine(), "autolite_version": autolite.__version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    result["replay"] = (f"autolite compress {opts.model} --recipe {opts.out}/recipe.yaml --data {opts.out}/calib.csv "
                        f"--out <dir>")
    save(model, worker.tokenizer, result, splits, Path(opts.out))
    return result


def measure(worker, model, pick_params, dense, splits, setup) -> dict[str, Any]:
    """Test accuracy of pick and FP32; FP32 eager / best dense / pick timed interleaved in one run."""
    fns = {"fp32": worker.baseline, "pick": forward_fn(model, worker.family, worker.inputs)}
    dense_model = None
    if dense is not None and dense.user_attrs["params"] != pick_params:
        dense_model = worker.build(dense.user_attrs["params"])[0]
        fns["dense"] = forward_fn(dense_model, worker.family, worker.inputs)
    samples = interleaved(fns, runs=setup.final_runs, warmup=2)
    median, joules = median_ms_joules(samples, setup.batch)
    out = {"test_acc": accuracy(model, worker.tokenizer, splits.test, setup.seq),
           "fp32_test_acc": accuracy(worker.original, worker.tokenizer, splits.test, setup.seq),
           "fp32_ms": median["fp32"], "ms": median["pick"], "speedup": median["fp32"] / median["pick"],
           "size_mb": model_size(model)[0], "fp32_size_mb": model_size(worker.original)[0],
           "energy": {"source": samples["pick"].energy_source, "note": samples["pick"].energy_note,
                      "joules_per_inference": joules["pick"], "fp32_joules_per_inference": joules["fp32"]},
           "runs": setup.final_runs}
    if dense is not None:
        median.setdefault("dense", median["pick"])
        out["best_dense"] = {"label": dense.user_attrs["label"], "ms": median["dense"],
                             "speedup": median["fp32"] / median["dense"],
                             "pick_over_dense": median["dense"] / median["pick"]}
    return out


def _machine() -> dict[str, Any]:
    info = probe()
    return {"summary": dict(info.summary_rows()), "cpu": info.cpu_model, "logical_cores": info.logical_cores}


def save(model, tokenizer, result: dict[str, Any], splits, out: Path) -> None:
    """Model, recipe.yaml, optimize.json, report.html/.md, calib.csv into ``out``, the search state carried over;
    written in a temporary directory and renamed into place."""
    with atomic_dir(out, overwrite=True) as tmp:
        write_model_files(model, tokenizer, tmp)
        recipe = {"name": "optimize", "passes": result["pick"]["recipe"]}
        header = (f"# autolite optimize pick: {result['pick']['label']} (trial {result['pick']['trial']})\n"
                  f"# replay: {result['replay']}\n")
        (tmp / "recipe.yaml").write_text(header + yaml.safe_dump(recipe, sort_keys=False))
        (tmp / "calib.csv").write_text(_csv(splits.calib.texts, splits.calib.labels), encoding="utf-8")
        (tmp / "optimize.json").write_text(json.dumps(result, indent=1, default=str))
        write_html(result, tmp / "report.html")
        write_markdown(result, tmp / "report.md")
        if (out / "search").is_dir():
            shutil.move(str(out / "search"), str(tmp / "search"))


def _csv(texts: list[str], labels: list[int]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts, labels))
    return buffer.getvalue()
