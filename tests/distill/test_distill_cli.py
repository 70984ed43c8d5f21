"""``autolite distill`` and ``autolite sensitivity`` write reloadable outputs; bad input is a one-line error."""
from __future__ import annotations

import json

from typer.testing import CliRunner

import autolite
from autolite.cli import _register_verbs, app
from autolite.errors import AutoliteError


def test_distill_verb_writes_student_and_report(tmp_path):
    _register_verbs()
    out = tmp_path / "student"
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(f"sentence number {i} about a cat and a dog" for i in range(10)))
    result = CliRunner().invoke(app, ["distill", "random:tiny-bert", "--student-layers", "1", "--steps", "2",
                                      "--batch-size", "4", "--eval-every", "1", "--no-bench", "--data", str(data),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    report = (out / "report.md").read_text()
    assert "before distillation" in report and "| 2 |" in report
    assert not (tmp_path / "student.checkpoint").exists()
    model, _, family = autolite.load(str(out))
    assert len(family.layers(model)) == 1


def test_distill_verb_needs_one_layer_choice(tmp_path):
    _register_verbs()
    result = CliRunner().invoke(app, ["distill", "random:tiny-bert", "--steps", "1", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, AutoliteError) and "--student-layers" in str(result.exception)


def test_sensitivity_verb_writes_table_heatmap_and_plan(tmp_path):
    _register_verbs()
    out = tmp_path / "sens"
    result = CliRunner().invoke(app, ["sensitivity", "random:tiny-bert", "--texts", "2", "--max-length", "12",
                                      "--bits", "8,4,2", "--no-gradient", "--budget", "4.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "heatmap.png").stat().st_size > 1000
    lines = (out / "sensitivity.csv").read_text().splitlines()
    assert lines[0].startswith("unit,weights,measured_8") and len(lines) == 1 + 12
    assert "mixed_precision" in (out / "mixed.yaml").read_text()
    model, _, _ = autolite.load(str(out / "model"))
    assert model.config.autolite["recipe"]["passes"][0]["pass"] == "mixed_precision"


def test_sensitivity_verb_impossible_budget_is_one_clear_error(tmp_path):
    from autolite.errors import RecipeError

    _register_verbs()
    result = CliRunner().invoke(app, ["sensitivity", "random:tiny-bert", "--texts", "2", "--max-length", "12",
                                      "--bits", "8,4", "--no-gradient", "--budget", "2.0", "--out",
                                      str(tmp_path / "s")])
    assert isinstance(result.exception, RecipeError)
    assert "cannot be met" in str(result.exception) and "raise the budget" in str(result.exception)
    assert not (tmp_path / "s").exists()  # nothing half-written
