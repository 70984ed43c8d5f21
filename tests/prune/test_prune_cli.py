"""``autolite prune``: saves a smaller model with report.md and importance.png; bad ratios are one-line errors."""
from __future__ import annotations

import json

from typer.testing import CliRunner

import autolite
from autolite.cli import _register_verbs, app
from autolite.prune.structure import head_groups, neuron_groups


def test_prune_verb_writes_a_smaller_model_and_plot(tmp_path):
    _register_verbs()
    out, data = tmp_path / "pruned", tmp_path / "texts.txt"
    data.write_text("The quick brown fox jumps over the lazy dog.\nCall me Ishmael.\nIt was the best of times.\n")
    result = CliRunner().invoke(app, ["prune", "random:tiny-llama", "--heads", "0.5", "--ffn", "0.5",
                                      "--recover-steps", "2", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "importance.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "prune-heads: removed 4 of 8 heads" in report and "loads with plain transformers" in report
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == 2 and config["intermediate_size"] == 64
    model, _, family = autolite.load(str(out))
    assert [g.num_heads for g in head_groups(family, model)] == [2, 2]
    assert [g.size for g in neuron_groups(family, model)] == [64, 64]


def test_prune_verb_rejects_bad_ratio(tmp_path):
    _register_verbs()
    result = CliRunner().invoke(app, ["prune", "random:tiny-bert", "--heads", "1.5", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--heads" in result.output  # a usage mistake, named, before any work
    assert not (tmp_path / "x").exists()


def test_recipe_files_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes"
    plain = autolite.load_recipe(str(root / "bert-prune-h40-f50.yaml"))
    fast = autolite.load_recipe(str(root / "bert-prune-h40-f50-fast.yaml"))
    assert [p.name for p in plain.passes] == ["prune-heads", "prune-ffn"]
    assert plain.passes[0].ratio == 0.4 and plain.passes[1].ratio == 0.5 and plain.passes[0].importance == "taylor"
    assert [p.name for p in fast.passes] == ["prune-heads", "prune-ffn", "fast-dense"]
