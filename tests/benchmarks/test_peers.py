"""``benchmarks/peers.py``: a build that would not fit is skipped with the reason; contenders are timed in groups."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import peers  # noqa: E402 - the benchmark script, importable once its folder is on the path


def test_a_build_that_fits_is_not_refused() -> None:
    assert peers.memory_short(fp32_mb=400, available_mb=20_000) is None


def test_a_build_that_does_not_fit_is_skipped_with_the_numbers() -> None:
    why = peers.memory_short(fp32_mb=1400, available_mb=3000)
    assert why is not None and "3000 MiB" in why and f"{peers.BUILD_MEMORY_FACTOR * 1400} MiB" in why


def test_contenders_that_do_not_fit_together_are_timed_in_groups_each_with_its_eager(monkeypatch) -> None:
    full = {"value": False}
    monkeypatch.setattr(peers, "memory_short", lambda fp32_mb: "no room" if full["value"] else None)
    monkeypatch.setattr(peers, "interleaved", lambda fns, runs, warmup: {n: [float(len(fns))] * runs for n in fns})
    groups, rows = peers.Groups(eager=lambda: None, runs=3), {"a": {}, "b": {}, "c": {}}
    for name in ("a", "b"):
        assert groups.room_for_one_more(100.0, rows) is None
        groups.add(name, lambda: None)
    full["value"] = True  # the third build would not fit next to a and b: they are timed and freed first
    assert groups.room_for_one_more(100.0, rows) == "no room"
    assert rows["a"]["group"] == rows["b"]["group"] == 0 and groups.fns == {}
    full["value"] = False
    assert groups.room_for_one_more(100.0, rows) is None
    groups.add("c", lambda: None)
    groups.close(rows)
    assert rows["c"]["group"] == 1 and groups.count == 2 and len(groups.eager_samples) == 6
    assert rows["a"]["speedup"] == rows["c"]["speedup"] == 1.0  # each over the eager of its own group
