"""``autolite.optimize``: the fastest model (or smallest) within an accuracy budget on the user's labeled data.

State lives in ``out/search/``: ``setup.json`` (settings, split indices, FP32 reference accuracies, the search
space), ``journal.log`` (Optuna's trial journal) and ``cache/`` (pruned models). A rerun with the same model,
data and shape continues the search; the result files are replaced atomically at the end.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import autolite
from autolite.errors import AutoliteError, RecipeError
from autolite.runtime.fast_dense import candidate_passes
from autolite.search import data as sdata
from autolite.search.ray_run import connect
from autolite.search.result import finish
from autolite.search.space import Space, make_space
from autolite.search.study import gate, open_study, run_local
from autolite.search.trial import Setup, Worker, run_safely

log = logging.getLogger(__name__)
OBJECTIVES = ("latency", "throughput", "size")


@dataclasses.dataclass
class Options:
    """What ``optimize`` was asked (validated before any work)."""

    model: str
    data: str
    out: str
    test: str | None = None
    calib: str | None = None
    max_drop: float = 1.0
    objective: str = "latency"
    batch: int = 32
    seq: int = 128
    minutes: float | None = 30.0
    trials: int | None = None
    recover_steps: int = 200
    backends: list[str] | None = None
    ray: bool = False
    ray_address: str | None = None
    cores_per_trial: int = 2
    speed_runs: int = 3  # interleaved runs per trial (after one warm-up)
    final_runs: int = 10  # interleaved runs of the final FP32 / best dense / pick measurement

    def __post_init__(self) -> None:
        if self.minutes is not None and not self.minutes > 0:
            raise RecipeError(f"--minutes must be > 0 (the search's time budget), got {self.minutes:g}")
        if self.trials is not None and self.trials < 1:
            raise RecipeError(f"--trials must be >= 1, got {self.trials}")
        if self.minutes is None and self.trials is None:
            raise RecipeError("give a time budget (--minutes) or a trial count (--trials)")
        if not 0 <= self.max_drop <= 100:
            raise RecipeError(f"--max-drop is in accuracy points, 0..100, got {self.max_drop:g}")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        for name in self.backends or []:
            candidate_passes(name)  # a one-line RecipeError for an unknown candidate
        if self.batch < 1 or self.seq < 2 or self.recover_steps < 0 or self.speed_runs < 1 or self.final_runs < 1:
            raise RecipeError("--batch and the run counts must be >= 1, --seq >= 2 and --recover-steps >= 0")


def optimize(model: str, data: str, out: str, *, progress: Callable[[str], None] | None = None,
             **options: Any) -> dict[str, Any]:
    """Search pruning x dynamic inference x precision/backend for ``model`` on labeled ``data``; save the pick.

    Returns the content of ``out/optimize.json``. Raises :class:`~autolite.errors.AutoliteError` (nothing saved)
    for bad input or when no candidate keeps accuracy within ``max_drop`` points of FP32 on validation.
    """
    opts = Options(model=model, data=str(data), out=str(out), **options)
    say = progress or (lambda message: log.info(message))
    out_dir = Path(opts.out)
    fresh = not out_dir.exists()
    check_out_dir(out_dir)
    executor = connect(opts.ray_address, opts.cores_per_trial) if opts.ray else None  # fails before any work
    try:
        worker, setup, splits, state = prepare(opts, say)
        space = Space(**state["space"])
        study = open_study(Path(setup.state_dir), opts.objective, space)
        say(f"searching {', '.join(space.backends)} x pruning x {space.dynamic or 'no dynamic passes'} "
            f"({opts.minutes or 'no'} minutes, {opts.trials or 'unlimited'} trials; "
            f"{sum(t.state.is_finished() for t in study.trials)} finished in the journal)")
        interrupted = run_trials(study, space, worker, setup, state, opts, executor, say)
        return finish(study, worker, setup, splits, state, opts, interrupted, say)
    except AutoliteError:
        if fresh:  # nothing of a failed first run stays behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise AutoliteError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "search" / "setup.json").is_file():
        raise AutoliteError(f"--out {out} exists and holds no autolite optimize search; choose another --out")


def prepare(opts: Options, say: Callable[[str], None]) -> tuple[Worker, Setup, sdata.Splits, dict[str, Any]]:
    """Check the data against the model, split it (or reload the split of a resumed search), score FP32."""
    files = {"data": opts.data, "test": opts.test, "calib": opts.calib}
    for what, path in files.items():  # format and labels present, before loading the model
        if path:
            sdata.read_labeled(path, f"--{what}")
    say(f"loading {opts.model}")
    loaded = autolite.load(opts.model)
    sdata.num_labels(loaded[0])
    parts = {k: sdata.labeled_file(p, loaded[0].config, f"--{k}") if p else None for k, p in files.items()}
    full, test, calib = parts["data"], parts["test"], parts["calib"]
    state_dir = Path(opts.out) / "search"
    setup = Setup(model=opts.model, batch=opts.batch, seq=opts.seq, max_drop=opts.max_drop,
                  objective=opts.objective, recover_steps=opts.recover_steps, state_dir=str(state_dir),
                  threads=opts.cores_per_trial if opts.ray else None, speed_runs=opts.speed_runs,
                  final_runs=opts.final_runs)
    identity = {"model": opts.model, **{k: sdata.fingerprint(v) if v else None for k, v in parts.items()},
                "batch": opts.batch, "seq": opts.seq, "objective": opts.objective, "recover_steps": opts.recover_steps}
    state = read_state(state_dir, identity)
    indices = state["indices"] if state else sdata.split_indices(len(full), test is not None, calib is not None)
    splits = sdata.make_splits(full, test, indices, calib)
    worker = Worker(setup, splits, loaded)
    if state is None:
        say(f"FP32 accuracy on validation ({len(splits.val)} rows)")
        ref = {"small": sdata.accuracy(worker.original, worker.tokenizer, splits.small_val, opts.seq),
               "val": sdata.accuracy(worker.original, worker.tokenizer, splits.val, opts.seq)}
        layers = len(worker.family.layers(worker.original))
        space = make_space(opts.max_drop, opts.recover_steps, opts.backends, num_layers=layers)
        state = dict(identity=identity, indices=indices, ref=ref, space=dataclasses.asdict(space),
                     test_source=splits.test_source)
        write_state(state_dir, state)
    return worker, setup, splits, state


def read_state(state_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    path = state_dir / "setup.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    changed = sorted(k for k, v in identity.items() if state["identity"].get(k) != v)
    if changed:
        raise AutoliteError(f"{state_dir.parent} holds a search with another {', '.join(changed)}; choose another "
                            "--out (or delete it) to start a new search")
    return state


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / ".setup.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(state_dir / "setup.json")


def run_trials(study, space: Space, worker: Worker, setup: Setup, state: dict[str, Any], opts: Options,
               executor: Any, say: Callable[[str], None]) -> bool:
    """Trials until the budget is spent; True when interrupted (Ctrl-C)."""
    deadline = time.monotonic() + (opts.minutes * 60 if opts.minutes else float("inf"))
    gate_fn = lambda: gate(study, state["ref"]["small"], opts.max_drop, state["ref"]["val"], deadline)  # noqa: E731
    if executor is not None:
        return executor(study, space, setup, worker.splits, gate_fn, state["ref"]["val"] - opts.max_drop, deadline,
                        opts.trials, say)

    def report(number: int) -> None:
        trial = study.trials[number]
        attrs = trial.user_attrs
        what = (f"val {attrs['val_acc']:.1f}%, {attrs['speedup']:.2f}x" if "val_acc" in attrs
                else attrs.get("pruned") or attrs.get("error", ""))
        say(f"trial {number} [{trial.state.name.lower()}] {attrs.get('label')}: {what}")
    try:
        return run_local(study, space, lambda p, g: run_safely(worker, p, g), gate_fn, opts.objective,
                         state["ref"]["val"] - opts.max_drop, deadline, opts.trials, on_trial=report)
    except KeyboardInterrupt:
        return True
