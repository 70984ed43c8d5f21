"""The Optuna side: a multi-objective study in a file journal (a rerun continues it), trials asked and told.

Objectives: validation accuracy (maximise) and speed-up over FP32 eager (maximise; ``--objective size``:
MiB, minimise). The TPE sampler is told the accuracy budget as a constraint, so it learns which regions
keep accuracy. The first trials (on a fresh study) are the space's seeds (:meth:`Space.seeds`); a structure
that finishes near the budget is queued under the fastest dense backends (:func:`follow_up`).
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

from autolite.search.space import Space, describe, has_dynamic, is_dense, is_graph_backend, is_structural, params_json

log = logging.getLogger(__name__)
STUDY = "autolite-optimize"
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
FOLLOW_SLACK = 1.0  # a structure this many points past the budget is still tried under the other fast backends
FOLLOW_BACKENDS = 3  # how many of the fastest dense backends a structure is tried under


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


def gate(study: optuna.Study, ref_small: float, max_drop: float, ref_val: float | None = None,
         deadline: float = float("inf")) -> dict[str, Any]:
    """What stage gates compare with: FP32's proxy accuracy, the finished trials within budget on the proxy,
    the leader (the best score within budget on validation; ``ref_val`` is FP32's validation accuracy) and the
    seconds left before ``deadline`` (``time.monotonic``)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    incumbents = [{"number": t.number, "small_acc": t.user_attrs["small_acc"], "score": t.user_attrs["score"]}
                  for t in done if t.user_attrs.get("small_acc", 0.0) >= ref_small - max_drop]
    feasible = [t for t in done if ref_val is not None and t.user_attrs.get("val_acc", -1.0) >= ref_val - max_drop]
    best = max(feasible, key=lambda t: t.user_attrs["score"], default=None)
    leader = {"number": best.number, "score": best.user_attrs["score"]} if best else None
    return {"ref_small": ref_small, "max_drop": max_drop, "incumbents": incumbents, "leader": leader,
            "seconds_left": deadline - time.monotonic()}


def follow_up(study: optuna.Study, number: int, budget: float) -> list[dict[str, Any]]:
    """Queue a finished structure near the ``budget`` (validation accuracy) under the fastest dense backends it
    has not run with: its pruned, recovered model is cached, so each costs a conversion and a timing."""
    trial = study.trials[number]
    params = trial.user_attrs.get("params", {})
    if trial.state != TrialState.COMPLETE or not is_structural(params) or \
            trial.user_attrs["val_acc"] < budget - FOLLOW_SLACK:
        return []
    timed = [t for t in study.trials if "speedup" in t.user_attrs and is_dense(t.user_attrs.get("params", {}))]
    fastest = sorted(timed, key=lambda t: -t.user_attrs["speedup"])
    backends = list(dict.fromkeys(t.user_attrs["params"]["backend"] for t in fastest))[:FOLLOW_BACKENDS]
    seen = {params_json(t.user_attrs.get("params") or t.system_attrs.get("fixed_params") or t.params)
            for t in study.trials}  # run, running or queued
    queued = []
    for backend in backends:
        candidate = dict(params, backend=backend)
        if params_json(candidate) not in seen and not (has_dynamic(params) and is_graph_backend(backend)):
            study.enqueue_trial(candidate, skip_if_exists=True)
            queued.append(candidate)
    return queued


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
        follow_up(study, trial.number, budget)
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
