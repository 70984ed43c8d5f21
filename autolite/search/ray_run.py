"""``--ray``: trials run as Ray tasks on a local or given cluster; the driver asks and tells the same journal.

Each task asks Ray for ``cores`` CPUs and runs torch with that many threads, so as many trials run at once as
the cluster has room for. A worker process keeps its loaded model and pruned models between tasks. The final
pick is re-measured by the driver alone, so concurrent trials never skew the reported speed-up (their own
speed-ups come from baseline and candidate interleaved in the same task, which keeps the ratio fair).
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable

from optuna.trial import TrialState

from autolite.errors import BackendUnavailableError
from autolite.search.study import follow_up, tell
from autolite.search.trial import Worker, run_safely

log = logging.getLogger(__name__)
_WORKERS: dict[tuple[str, str], Worker] = {}
CONNECT_TIMEOUT_S = 5.0


def _reachable(address: str) -> None:
    """A quick TCP probe of ``host:port`` (Ray itself retries for a long time before it gives up)."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BackendUnavailableError(f"--ray-address '{address}' is not host:port (or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BackendUnavailableError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


def connect(address: str | None, cores: int) -> Callable[..., bool]:
    """Join (or start, without an address) a Ray cluster; returns the executor ``run_trials`` calls."""
    try:
        import ray  # optional: the autolite[ray] extra
    except ImportError as exc:
        raise BackendUnavailableError("--ray needs Ray: pip install 'autolite[ray]'") from exc
    if address:
        _reachable(address)
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, num_cpus=None if address else max(cores, 1))
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError for a bad cluster
        raise BackendUnavailableError(f"cannot start or join Ray ({address or 'local'}): "
                                      f"{str(exc).splitlines()[0]}") from exc
    remote = ray.remote(num_cpus=cores)(ray_trial)
    slots = max(1, int(ray.cluster_resources().get("CPU", cores)) // max(cores, 1))

    def run(study, space, setup, splits, gate_fn, budget, deadline, max_trials, say) -> bool:
        return _loop(ray, remote, slots, study, space, setup, splits, gate_fn, budget, deadline, max_trials, say)
    return run


def ray_trial(setup: Any, splits: Any, params: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """One trial in a Ray worker process (its Worker is kept for the next task of the same search)."""
    key = (setup.state_dir, setup.model)
    if key not in _WORKERS:
        _WORKERS[key] = Worker(setup, splits)
    return run_safely(_WORKERS[key], params, gate)


def _loop(ray: Any, remote: Any, slots: int, study, space, setup, splits, gate_fn, budget: float, deadline: float,
          max_trials: int | None, say: Callable[[str], None]) -> bool:
    """Keep ``slots`` trials in flight until the deadline / trial count; True when interrupted."""
    pending: dict[Any, tuple[Any, dict[str, Any]]] = {}
    started = 0
    try:
        while True:
            while len(pending) < slots and time.monotonic() < deadline and (max_trials is None or started < max_trials):
                trial = study.ask()
                params = space.suggest(trial)
                pending[remote.remote(setup, splits, params, gate_fn())] = (trial, params)
                started += 1
            if not pending:
                return False
            ready, _ = ray.wait(list(pending), num_returns=1)
            trial, params = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # the task died (worker crash, OOM): the trial failed
                result = {"state": "failed", "attrs": {"error": f"ray task: {str(exc).splitlines()[0][:300]}"}}
            tell(study, trial, params, result, setup.objective, budget)
            follow_up(study, trial.number, budget)
            say(f"trial {trial.number} [{result['state']}] on Ray")
    except KeyboardInterrupt:
        for ref, (trial, _) in pending.items():
            ray.cancel(ref, force=True)
            study.tell(trial, state=TrialState.FAIL)
        return True
