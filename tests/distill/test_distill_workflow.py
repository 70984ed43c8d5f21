"""The distill and QAT workflows take a default time budget when the CLI gives neither --steps nor --minutes."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autolite.cli import _register_verbs, app
from autolite.distill import workflow
from autolite.distill.workflow import DEFAULT_MINUTES, train_config
from autolite.quant import qat_train


class _Stop(Exception):
    """Raised by the stand-in trainer once it has seen the config (no training in these tests)."""


def _capture(seen: dict, position: int):
    def trainer(*args, **kwargs):
        seen["config"] = args[position]
        raise _Stop
    return trainer


def test_train_config_defaults_to_a_time_budget():
    assert train_config().minutes == DEFAULT_MINUTES and train_config().steps is None
    assert train_config(steps=3).minutes is None and train_config(minutes=1.0).minutes == 1.0


@pytest.mark.parametrize("verb", ["distill", "qat"])
def test_verb_without_a_budget_trains_for_the_default_minutes(verb, monkeypatch, tmp_path):
    seen: dict = {}
    if verb == "distill":
        monkeypatch.setattr(workflow, "distill", _capture(seen, 4))
        args = ["distill", "random:tiny-bert", "-k", "1", "--out", str(tmp_path / "d")]
    else:
        monkeypatch.setattr(qat_train, "gptq_start", lambda *a, **k: None)
        monkeypatch.setattr(qat_train, "run_qat", _capture(seen, 5))
        args = ["qat", "random:tiny-llama", "--out", str(tmp_path / "d")]
    _register_verbs()
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, _Stop), result.output  # not "got multiple values for keyword 'minutes'"
    assert seen["config"].minutes == DEFAULT_MINUTES and seen["config"].steps is None
