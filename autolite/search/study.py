"""The Optuna side: a multi-objective study in a file journal (a rerun continues it), trials asked and told.

Objectives: validation accuracy (maximise) and speed-up over FP32 eager (maximise; ``--objective size``:
MiB, minimise). The TPE sampler is told the accuracy budget as a constraint, so it learns which regions
keep accuracy. The first trials (on a fresh study) are every dense backend on the unpruned model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autolite.search.space import Space, describe

log = logging.getLogger(__name__)
STUDY = "autolite-optimize"
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def open_study(state_dir: Path, objective: str, space: Space) -> optuna.Study:
    """Create or continue the study journaled in ``state_dir/journal.log``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(state_dir / "journal.log")))
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=len(space.backends) + 4)
    directions = ["maximize", "minimize" if objective == "size" else "maximize"]
    study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if not study.trials:
        for params in space.seeds():
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def objective_values(attrs: dict[str, Any], objective: str) -> list[float]:
    return [attrs["val_acc"], attrs["size_mb"] if objective == "size" else attrs["speedup"]]


def tell(study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], result: dict[str, Any],
         objective: str, budget: float) -> None:
    """Record a trial's outcome, everything it measured (user attributes, JSON-safe) and, for the sampler,
    how far it is from the accuracy ``budget`` (validation accuracy it must reach; <= 0 is feasible)."""
    attrs = dict(result["attrs"], label=describe(params), params=params)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    state = STATES[result["state"]]
    if state == TrialState.COMPLETE:
        trial.set_constraint("accuracy", budget - attrs["val_acc"])
    values = objective_values(attrs, objective) if state == TrialState.COMPLETE else None
    study.tell(trial, values, state=state)
    log.info("trial %d %s: %s", trial.number, result["state"], attrs.get("label"))


def gate(study: optuna.Study, ref_small: float, max_drop: float) -> dict[str, Any]:
    """What stage gates compare with: FP32's proxy accuracy and the finished trials within budget."""
    incumbents = [{"number": t.number, "small_acc": t.user_attrs["small_acc"], "score": t.user_attrs["score"]}
                  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("small_acc", 0.0) >= ref_small - max_drop]
    return {"ref_small": ref_small, "max_drop": max_drop, "incumbents": incumbents}


def run_local(study: optuna.Study, space: Space, evaluate: Callable[[dict, dict], dict], gate_fn: Callable[[], dict],
              objective: str, budget: float, deadline: float, max_trials: int | None,
              on_trial: Callable[[int], None] | None = None) -> bool:
    """Ask, evaluate, tell until the deadline or ``max_trials`` new trials; True when Ctrl-C stopped it."""
    done = 0
    while time.monotonic() < deadline and (max_trials is None or done < max_trials):
        trial = study.ask()
        params = space.suggest(trial)
        try:
            result = evaluate(params, gate_fn())
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            return True
        tell(study, trial, params, result, objective, budget)
        done += 1
        if on_trial:
            on_trial(trial.number)
    return False


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as a plain dict (number, state, params, what it measured)."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        attrs = {k: v for k, v in t.user_attrs.items() if k != "params"}
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": t.user_attrs.get("params", t.params),
                     **attrs})
    return rows
