"""``autolite qat`` trains briefly and writes a model of real packed INT4 modules that reloads."""
import json

from typer.testing import CliRunner

import autolite
from autolite.cli import _register_verbs, app
from autolite.errors import RecipeError
from autolite.quant.layers import WeightOnlyInt4Linear


def test_qat_verb_writes_reloadable_packed_model(tmp_path):
    _register_verbs()
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(f"sentence number {i} about a cat and a dog in the garden" for i in range(10)))
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["qat", "random:tiny-llama", "--format", "w4g32", "--steps", "2",
                                      "--batch-size", "2", "--eval-every", "1", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "qat.json").read_text())["summary"]
    assert summary["steps"] == 2 and summary["perplexity_start"] > 0 and summary["perplexity_end"] > 0
    model, _, _ = autolite.load(str(out))
    packed = [m for m in model.modules() if isinstance(m, WeightOnlyInt4Linear)]
    assert packed and all(m.group == 32 for m in packed)
    assert not (tmp_path / "q.checkpoint").exists()


def test_qat_verb_rejects_format_without_engine_module(tmp_path):
    _register_verbs()
    result = CliRunner().invoke(app, ["qat", "random:tiny-llama", "--format", "w3g64", "--steps", "1",
                                      "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, RecipeError) and "no packed engine module" in str(result.exception)
