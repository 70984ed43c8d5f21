"""Recipe fields are type-checked from the config annotations; recipe files say where they are broken."""
import re

import pytest

from autolite.errors import RecipeError
from autolite.passes import load_recipe


@pytest.mark.parametrize("entry,message", [
    ({"pass": "int8-static", "min_sqnr": "high"}, "min_sqnr must be a number or null, not 'high'"),
    ({"pass": "compile", "freeze": "maybe"}, "freeze must be true or false, not 'maybe'"),
    ({"pass": "int8-dynamic", "skip": "classifier"}, "skip must be a list of strings, not 'classifier'"),
    ({"pass": "weight-only", "bits": True}, "bits must be an integer, not True"),
    ({"pass": "prune-heads", "ratio": "0.3"}, "ratio must be a number"),
])
def test_wrong_field_types_are_refused(entry, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe([entry])


def test_right_types_pass_and_ints_count_as_floats():
    recipe = load_recipe([{"pass": "int8-static", "min_sqnr": 20}, {"pass": "int8-dynamic", "skip": ["classifier"]}])
    assert [p.name for p in recipe.passes] == ["int8-static", "int8-dynamic"]


def test_every_preset_still_loads():
    from autolite.presets import preset_names

    for name in preset_names():
        load_recipe(name)


@pytest.mark.parametrize("text,message", [
    ("passes:\n  - {pass: int8-dynamic\n  - x: [\n", "line 3, column 6"),
    ("passes: []\nnmae: x\n", "no top-level key(s) ['nmae']"),
])
def test_recipe_file_errors(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path)


def test_json_recipe_error_has_a_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"passes": [\n}')
    with pytest.raises(RecipeError, match="line 2, column 1"):
        load_recipe(path)
