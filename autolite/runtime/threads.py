"""Thread scheduler for serving: split the usable cores between model workers, one NUMA node each.

``plan_workers`` is a pure function of the hardware probe: each worker gets a contiguous slice of the
CPUs this process may use (its affinity mask), taken from a single NUMA node whenever the node has
enough CPUs, and as many intra-op threads as CPUs. Leftover CPUs (cores not divisible by workers) are
left unpinned for the HTTP event loop and tokenization. ``pin_current_thread`` applies a plan inside the
worker's own thread: ``os.sched_setaffinity(0, ...)`` pins the calling thread on Linux, and the OpenMP
team that thread starts for torch's kernels inherits its mask.
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from autolite.errors import AutoliteError
from autolite.runtime.hardware import MachineInfo, probe

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerPlan:
    """CPUs, intra-op threads and NUMA node of one model worker (``numa_node`` None = unknown)."""

    index: int
    cpus: tuple[int, ...]
    threads: int
    numa_node: int | None

    def describe(self) -> str:
        node = "?" if self.numa_node is None else str(self.numa_node)
        return f"worker {self.index}: CPUs {_cpulist(self.cpus)} (NUMA node {node})"


def usable_cpus() -> list[int]:
    """CPUs this process may run on (its affinity mask), else ``range(os.cpu_count())``."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def plan_workers(workers: int = 1, info: MachineInfo | None = None, cpus: list[int] | None = None,
                 threads: int | None = None) -> list[WorkerPlan]:
    """Split ``cpus`` (default: the usable CPUs) between ``workers``, keeping each on one NUMA node.

    ``threads`` overrides the intra-op threads per worker (default: the worker's CPU count).
    """
    cpus = sorted(cpus) if cpus is not None else usable_cpus()
    if workers < 1:
        raise AutoliteError("--workers must be >= 1")
    if workers > len(cpus):
        raise AutoliteError(f"--workers {workers} exceeds the {len(cpus)} usable CPUs; use at most {len(cpus)}")
    if threads is not None and threads < 1:
        raise AutoliteError("--threads must be >= 1")
    per_worker = len(cpus) // workers
    groups = _numa_groups(info if info is not None else probe(), cpus)
    slices = _slices(groups, workers, per_worker)
    return [WorkerPlan(i, tuple(chunk), threads or len(chunk), node) for i, (node, chunk) in enumerate(slices)]


def _numa_groups(info: MachineInfo, cpus: list[int]) -> list[tuple[int | None, list[int]]]:
    """The usable CPUs grouped by NUMA node (one group with node None when the topology is unknown)."""
    allowed, groups, seen = set(cpus), [], set()
    for node in info.numa_nodes:
        node_cpus = [c for c in (node.get("cpus") or []) if c in allowed]
        if node_cpus:
            groups.append((node.get("id"), node_cpus))
            seen.update(node_cpus)
    rest = [c for c in cpus if c not in seen]
    if rest:
        groups.append((None, rest))
    return groups


def _slices(groups: list[tuple[int | None, list[int]]], workers: int,
            per_worker: int) -> list[tuple[int | None, list[int]]]:
    """Cut ``per_worker`` CPUs per worker, first whole slices inside nodes, then across nodes."""
    slices, spill = [], []
    for node, node_cpus in groups:
        while len(node_cpus) >= per_worker and len(slices) < workers:
            slices.append((node, node_cpus[:per_worker]))
            node_cpus = node_cpus[per_worker:]
        spill.extend(node_cpus)
    while len(slices) < workers:  # only when nodes are smaller than a slice: the worker spans nodes
        log.info("a worker spans NUMA nodes (nodes smaller than %d CPUs)", per_worker)
        slices.append((None, spill[:per_worker]))
        spill = spill[per_worker:]
    return slices


def pin_current_thread(plan: WorkerPlan, pin: bool = True) -> None:
    """Pin the calling thread to ``plan.cpus`` (Linux) and set torch's intra-op threads."""
    import torch

    if pin and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, plan.cpus)
        except OSError as exc:  # e.g. a container that forbids changing affinity
            log.warning("could not pin %s: %s", plan.describe(), exc)
    torch.set_num_threads(plan.threads)
    log.info("%s, %d threads%s", plan.describe(), plan.threads, "" if pin else " (not pinned)")


def _cpulist(cpus: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"``."""
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(parts)


def thread_candidates(plan: WorkerPlan) -> list[int]:
    """Intra-op thread counts worth measuring for ``plan``: 1, half its CPUs, all its CPUs."""
    return sorted({1, max(1, plan.threads // 2), plan.threads})


def calibrate_threads(forward: Callable[[], Any], candidates: Sequence[int],
                      repeats: int = 3) -> tuple[int, dict[int, float]]:
    """Time ``forward`` in the calling thread under each thread count; keep and return the fastest.

    Returns ``(threads, {threads: median seconds})``. On an oversubscribed machine (other processes on
    the same cores) one thread often beats several, because every parallel region waits for its slowest,
    descheduled thread; measuring finds that instead of assuming it.
    """
    import torch

    timings: dict[int, float] = {}
    for count in candidates:
        torch.set_num_threads(count)
        forward()  # warm-up for this thread count
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            samples.append(time.perf_counter() - start)
        timings[count] = statistics.median(samples)
    best = min(timings, key=timings.__getitem__)
    torch.set_num_threads(best)
    return best, timings


def in_passing_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run in a new thread that ends when it returns (its result or its exception).

    Each thread that runs torch's parallel regions keeps an OpenMP team of its own for as long as it lives, and
    once the teams together hold more threads than the machine has cores, libgomp stops spin-waiting between
    regions (its throttled spin) and every region pays a futex wake-up: a served decode step ran 16-19 ms instead
    of 8.3 ms on 2 cores after the main thread had loaded the model with 2 threads. Work done once before serving
    (loading, compressing, compiling) runs here, so the only lasting team is the one of the thread that serves.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"autolite-{getattr(fn, '__name__', 'work')}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
