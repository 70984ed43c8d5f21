"""The serving scheduler: core split between workers, NUMA locality, thread pinning."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from autolite.errors import AutoliteError
from autolite.runtime.hardware import MachineInfo
from autolite.runtime.threads import pin_current_thread, plan_workers, usable_cpus

TWO_NODES = MachineInfo(numa_nodes=[{"id": 0, "cpus": list(range(0, 8))}, {"id": 1, "cpus": list(range(8, 16))}])


def test_workers_stay_on_one_numa_node():
    plans = plan_workers(4, TWO_NODES, cpus=list(range(16)))
    assert [p.cpus for p in plans] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
    assert [p.numa_node for p in plans] == [0, 0, 1, 1]
    assert all(p.threads == 4 for p in plans)


def test_leftover_cpus_are_left_for_the_event_loop_and_threads_can_be_overridden():
    plans = plan_workers(3, TWO_NODES, cpus=list(range(16)), threads=2)
    assert [len(p.cpus) for p in plans] == [5, 5, 5]
    assert {p.numa_node for p in plans[:1]} == {0} and plans[1].numa_node == 1
    assert all(p.threads == 2 for p in plans)
    assert not set(plans[0].cpus) & set(plans[1].cpus)


def test_only_usable_cpus_are_planned_and_unknown_topology_is_none():
    plans = plan_workers(2, TWO_NODES, cpus=[6, 7, 8, 9])
    assert [(p.cpus, p.numa_node) for p in plans] == [((6, 7), 0), ((8, 9), 1)]
    plans = plan_workers(1, MachineInfo(), cpus=[0, 1, 2])
    assert plans[0].numa_node is None and plans[0].cpus == (0, 1, 2)
    assert "0-2" in plans[0].describe()


def test_a_worker_spans_nodes_only_when_nodes_are_too_small():
    info = MachineInfo(numa_nodes=[{"id": 0, "cpus": [0, 1]}, {"id": 1, "cpus": [2, 3]}])
    plans = plan_workers(1, info, cpus=[0, 1, 2, 3])
    assert plans[0].cpus == (0, 1, 2, 3) and plans[0].numa_node is None


def test_bad_worker_counts_are_user_errors():
    with pytest.raises(AutoliteError, match="exceeds the 2 usable CPUs"):
        plan_workers(3, TWO_NODES, cpus=[0, 1])
    with pytest.raises(AutoliteError, match="--workers must be >= 1"):
        plan_workers(0, TWO_NODES)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pin_current_thread_pins_only_the_worker_thread():
    import torch

    before, threads_before = os.sched_getaffinity(0), torch.get_num_threads()
    plan = plan_workers(1, MachineInfo(), cpus=[usable_cpus()[0]])[0]
    with ThreadPoolExecutor(1, initializer=pin_current_thread, initargs=(plan, True)) as pool:
        inside = pool.submit(lambda: (os.sched_getaffinity(0), torch.get_num_threads())).result()
    assert inside == ({plan.cpus[0]}, 1)
    assert os.sched_getaffinity(0) == before and torch.get_num_threads() == threads_before


def test_calibration_keeps_the_fastest_thread_count():
    import time

    import torch

    from autolite.runtime.threads import calibrate_threads, thread_candidates

    def forward():  # pretend one thread is fast and more threads are slow (an oversubscribed machine)
        time.sleep(0.001 if torch.get_num_threads() == 1 else 0.02)

    before = torch.get_num_threads()
    with ThreadPoolExecutor(1) as pool:
        best, timings = pool.submit(calibrate_threads, forward, [1, 2, 4], 2).result()
    assert best == 1 and set(timings) == {1, 2, 4} and timings[1] < timings[2]
    assert torch.get_num_threads() == before  # only the worker thread changed
    plan = plan_workers(1, MachineInfo(), cpus=list(range(8)))[0]
    assert thread_candidates(plan) == [1, 4, 8]


def test_work_in_a_passing_thread_returns_its_result_or_raises_its_error_and_leaves_no_thread():
    import threading

    from autolite.runtime.threads import in_passing_thread

    before = threading.active_count()
    name = in_passing_thread(lambda x, y=0: (threading.current_thread().name, x + y), 2, y=3)
    assert name[1] == 5 and name[0] != threading.current_thread().name
    with pytest.raises(ValueError, match="bad spec"):
        in_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad spec")))
    assert threading.active_count() == before


def test_the_server_loads_its_model_in_a_thread_that_ends(monkeypatch):
    import threading

    from autolite.serve import server
    from autolite.serve.app import ServeConfig

    seen = []
    monkeypatch.setattr(server, "_load_engine", lambda *a: seen.append(threading.current_thread()) or "engine")
    assert server.load_engine("random:tiny-bert", ServeConfig()) == "engine"
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
