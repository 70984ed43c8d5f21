from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from autolite.search.trial import Pruned, SpeedCache, Worker

LEADER = {"leader": {"number": 3, "score": 2.0}}


def gate_with(screened: float, params: dict, objective: str = "latency", structure_s: float = 0.0,
              seconds_left: float = 60.0) -> None:
    """Stage 0 of a trial whose structure times ``screened`` x before recovery."""
    worker = SimpleNamespace(setup=SimpleNamespace(objective=objective, recover_steps=10), screen=lambda p: screened,
                             _cache={}, structure_s=structure_s, cache_dir=lambda passes: Path("/nonexistent"))
    Worker.gate_structure(worker, dict({"layers": 0.5, "heads": 0.0, "ffn": 0.0, "backend": "int8-dynamic"},
                                       **params), dict(LEADER, seconds_left=seconds_left))


def test_a_structure_slower_than_the_leader_stops_before_recovery():
    with pytest.raises(Pruned) as stopped:
        gate_with(1.2, {})
    assert stopped.value.attrs["stage"] == 0 and "trial 3" in stopped.value.attrs["pruned"]
    gate_with(1.9, {})  # within the timing slack: it goes on
    gate_with(1.4, {"dyn:early-exit": True})  # a dynamic pass may still make it fast enough
    gate_with(0.5, {}, objective="size")  # the size objective does not screen on speed


def test_no_new_distillation_without_the_time_it_takes():
    with pytest.raises(Pruned, match="~100 s here, 60 s of the budget"):
        gate_with(9.0, {}, structure_s=100.0)
    gate_with(9.0, {}, structure_s=50.0)


def test_a_dynamic_pass_on_a_graph_backend_stops_at_once():
    with pytest.raises(Pruned, match="runs one exported graph"):
        gate_with(9.0, {"dyn:token-drop": True, "backend": "openvino-int8"})


def test_speed_cache_persists_per_model_and_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLITE_CACHE", str(tmp_path))
    model = torch.nn.Linear(4, 4)
    model.config = SimpleNamespace(model_type="tiny")
    cache = SpeedCache(model, 2, 16)
    cache["k"] = 1.23456
    assert "k" in SpeedCache(model, 2, 16) and SpeedCache(model, 2, 16)["k"] == pytest.approx(1.2346)
    assert "k" not in SpeedCache(model, 4, 16)
    cache.path.write_text("{not json")
    assert "k" not in SpeedCache(model, 2, 16)
