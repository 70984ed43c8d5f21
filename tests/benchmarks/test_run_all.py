"""``benchmarks/run_all.py``: the encoder-stack harness (T5's encoder alone) and the e2e recipes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autolite.errors import ArgumentError
from autolite.passes import load_recipe

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_all  # noqa: E402 - the benchmark script, importable once its folder is on the path

RECIPE = [{"pass": "prune-layers", "indices": ["encoder.1"]},
          {"pass": "prune-heads", "ratio": 0.5, "importance": "magnitude", "reconstruct": False},
          {"pass": "int8-dynamic", "fallback": False}]


def test_encoder_stack_is_the_encoder_alone():
    model, _, family = run_all.encoder_stack("random:tiny-t5#encoder")
    assert family.kind == "encoder" and type(model).__name__ == "T5EncoderModel"
    assert [v.stack for v in family.layers(model)] == ["encoder", "encoder"]


def test_bench_encoder_stack_prunes_and_times(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(__import__("json").dumps({"name": "tiny-e2e", "passes": RECIPE}))
    result = run_all.bench_encoder_stack("random:tiny-t5#encoder", str(recipe), batch=2, seq=16, runs=5, warmup=1)
    assert result["candidate"]["params"] < result["baseline"]["params"]
    assert result["speedup"] > 0 and 0 < result["fidelity"]["cosine"] <= 1.0001
    assert any("removed 1 of 2 layers" in note for note in result["notes"])
    assert result["family"] == "t5-encoder" and "top1_agreement" not in result["fidelity"] and result["recipe"]["name"] == "r"


def test_encoder_suffix_needs_a_seq2seq_model():
    with pytest.raises(ArgumentError, match="takes a seq2seq model"):
        run_all.encoder_stack("random:tiny-bert#encoder")


@pytest.mark.parametrize("name", ["bert-base-e2e", "roberta-large-e2e", "t5-small-encoder-e2e"])
def test_e2e_recipes_load(name):
    recipe = load_recipe(str(ROOT / "recipes" / f"{name}.yaml"))
    assert recipe.name == name and [p.name for p in recipe.passes][:3] == ["prune-layers", "prune-heads", "prune-ffn"]


def test_every_case_names_an_existing_recipe():
    for name, (model, recipe, *_rest) in run_all.CASES.items():
        if recipe.endswith(".yaml"):
            assert (ROOT / recipe).exists(), name


def test_only_that_matches_nothing_says_so(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "no-such-case"])
    with pytest.raises(SystemExit, match="no case name contains 'no-such-case'"):
        run_all.main()


def test_a_failing_case_does_not_stop_the_others(monkeypatch):
    ran, rendered = [], []

    def fake_case(name, *_case):
        ran.append(name)
        if name.endswith("b32"):
            raise run_all.subprocess.CalledProcessError(1, ["bench"])
    monkeypatch.setattr(run_all, "run_case", fake_case)
    monkeypatch.setattr(run_all, "render", lambda: rendered.append(True))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "e2e-bert-base"])
    with pytest.raises(SystemExit, match="failed cases: e2e-bert-base-b32"):
        run_all.main()
    assert ran == ["e2e-bert-base-b32", "e2e-bert-base-b1"] and rendered == [True]
