import pytest

import autolite
from autolite.config import PassConfig, Recipe
from autolite.passes import load_recipe
from autolite.errors import RecipeError
from autolite.runtime.compile import Compile
from autolite.runtime.precision import Precision


def test_preset_and_round_trip(tmp_path):
    recipe = load_recipe("bf16-compile")
    assert [p.name for p in recipe.passes] == ["precision", "compile"]
    path = tmp_path / "r.yaml"
    recipe.save(path)
    again = load_recipe(str(path))
    assert again.to_dict()["passes"] == recipe.to_dict()["passes"]


def test_json_and_list_recipes(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[{"pass": "precision", "dtype": "fp16"}]')
    assert load_recipe(str(path)).passes == [Precision(dtype="fp16")]
    assert load_recipe([Compile(backend="eager")]).passes[0].backend == "eager"


@pytest.mark.parametrize("entry,message", [
    ({"pass": "nope"}, "unknown pass 'nope'"),
    ({"pass": "precision", "bits": 4}, "has no option"),
    ({"pass": "precision", "dtype": "int3"}, "precision dtype must be"),
    ({"dtype": "bf16"}, "needs a 'pass' key"),
    ({"pass": "precision", "version": 99}, "newer than this autolite"),
])
def test_invalid_entries(entry, message):
    with pytest.raises(RecipeError, match=message):
        PassConfig.from_dict(entry)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="presets:"):
        load_recipe("no-such-preset")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(bad))


def test_compress_records_history(load_model):
    model, tok, _ = load_model("tiny-bert")
    model = autolite.compress(model, [Precision(dtype="fp32")])
    model = autolite.compress(model, Recipe([Compile(backend="eager")], name="c"))
    state = model.config.autolite
    assert [p["pass"] for p in state["recipe"]["passes"]] == ["precision", "compile"]
