import json

import pytest

import autolite
from autolite.config import PassConfig
from autolite.errors import AutoliteError, BackendUnavailableError, DataError, RecipeError
from autolite.search import optimize

from .conftest import TRIAL_OPTIONS, write_csv


def test_search_end_to_end(searched):
    out, result = searched
    for name in ("config.json", "model.safetensors", "recipe.yaml", "optimize.json", "report.html", "report.md",
                 "calib.csv", "search/journal.log", "search/setup.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "optimize.json").read_text())
    assert len(saved["trials"]) == 2 and saved["pick"]["trial"] in (0, 1)
    pick = saved["pick"]
    for key in ("speedup", "size_mb", "val_acc", "test_acc", "energy", "recipe"):
        assert key in pick, key
    assert pick["speedup"] == pytest.approx(pick["fp32_ms"] / pick["ms"])
    assert saved["fp32"]["test_acc"] >= 0
    assert pick["energy"]["source"] != "modelled" or "modelled, not measured" in pick["energy"]["note"]
    model, _, _ = autolite.load(out)
    assert type(model).__name__ == "BertForSequenceClassification"
    recipe = autolite.load_recipe(str(out / "recipe.yaml"))
    assert [p.to_dict() for p in recipe.passes] == [PassConfig.from_dict(p).to_dict() for p in pick["recipe"]]


def test_resume_continues_the_journal_and_ctrl_c_keeps_the_best(searched, labeled_csv, monkeypatch):
    import autolite.search.trial as trial

    out, first = searched

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(trial.Worker, "run", interrupted)  # Ctrl-C during the resumed search's first trial
    again = optimize("random:tiny-bert", str(labeled_csv), str(out), **dict(TRIAL_OPTIONS, trials=1))
    assert [t["number"] for t in again["trials"]] == [0, 1, 2] and again["trials"][2]["state"] == "fail"
    assert again["interrupted"] and again["trials"][0]["label"] == first["trials"][0]["label"]
    assert again["pick"]["trial"] in (0, 1) and (out / "model.safetensors").is_file()


def test_resume_refuses_other_data(searched, tmp_path, labeled_rows):
    out, _ = searched
    other = write_csv(tmp_path / "other.csv", labeled_rows[:-1])
    with pytest.raises(AutoliteError, match="another data"):
        optimize("random:tiny-bert", str(other), str(out), **TRIAL_OPTIONS)


def test_no_labels(tmp_path, labeled_rows):
    data = write_csv(tmp_path / "plain.csv", [(t,) for t, _ in labeled_rows], header=("text",))
    with pytest.raises(DataError, match="no labels"):
        optimize("random:tiny-bert", str(data), str(tmp_path / "out"), **TRIAL_OPTIONS)
    assert not (tmp_path / "out").exists()


def test_label_set_differs_from_head(tmp_path, labeled_rows):
    data = write_csv(tmp_path / "five.csv", [(t, i % 5) for i, (t, _) in enumerate(labeled_rows)])
    with pytest.raises(DataError, match="head has 2 classes"):
        optimize("random:tiny-bert", str(data), str(tmp_path / "out"), **TRIAL_OPTIONS)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, fragment", [(dict(minutes=0), "--minutes must be > 0"),
                                               (dict(objective="speed"), "--objective"),
                                               (dict(backends=["nope"]), "unknown recipe")])
def test_bad_options(tmp_path, labeled_csv, options, fragment):
    with pytest.raises(RecipeError, match=fragment):
        optimize("random:tiny-bert", str(labeled_csv), str(tmp_path / "out"), **dict(TRIAL_OPTIONS, **options))
    assert not (tmp_path / "out").exists()


def test_budget_no_candidate_meets_saves_nothing(tmp_path, labeled_csv, monkeypatch):
    import autolite.search.trial as trial

    monkeypatch.setattr(trial, "accuracy", lambda *args: 0.0)  # every candidate far below FP32
    opts = dict(TRIAL_OPTIONS, max_drop=1.0, trials=1)
    with pytest.raises(AutoliteError, match="nothing saved"):
        optimize("random:tiny-bert", str(labeled_csv), str(tmp_path / "out"), **opts)
    assert not (tmp_path / "out").exists()


def test_closest_candidate_is_named():
    from types import SimpleNamespace

    from autolite.search.result import choose

    trial = SimpleNamespace(state=SimpleNamespace(name="COMPLETE"), number=0,
                            user_attrs={"val_acc": 80.0, "label": "L0.5 H0 F0 ort-int8", "speedup": 4.0, "score": 4.0,
                                        "params": {"layers": 0.5}})
    with pytest.raises(AutoliteError, match=r"closest was 'L0.5 H0 F0 ort-int8' at 80.00% \(10.00 points lower"):
        choose(SimpleNamespace(trials=[trial]), 90.0, 1.0, "latency")


def test_unreachable_ray_is_one_line(tmp_path, labeled_csv):
    with pytest.raises(BackendUnavailableError) as info:
        optimize("random:tiny-bert", str(labeled_csv), str(tmp_path / "out"),
                 **dict(TRIAL_OPTIONS, ray=True, ray_address="127.0.0.1:1"))
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_cli_bad_input_one_line(run_cli, tmp_path, labeled_csv):
    code, _, err = run_cli("optimize", "random:tiny-bert", "--data", str(labeled_csv), "--out", str(tmp_path / "o"),
                           "--minutes", "0")
    assert code != 0 and "--minutes must be > 0" in err and "Traceback" not in err


@pytest.mark.slow
def test_trials_on_local_ray(tmp_path, labeled_csv):
    pytest.importorskip("ray")
    result = optimize("random:tiny-bert", str(labeled_csv), str(tmp_path / "out"),
                      **dict(TRIAL_OPTIONS, ray=True, cores_per_trial=1))
    assert len(result["trials"]) == 2 and (tmp_path / "out" / "model.safetensors").is_file()


def test_label_names_map_through_the_head(tmp_path, labeled_rows):
    from autolite.search.data import label_ids

    config = autolite.load("random:tiny-bert")[0].config
    assert label_ids(["LABEL_1", "LABEL_0"], config, "--data") == [1, 0]
    data = write_csv(tmp_path / "names.csv", [(t, "spam" if y else "LABEL_0") for t, y in labeled_rows])
    with pytest.raises(DataError, match=r"label\(s\) \['spam'\] that the model's head does not have"):
        optimize("random:tiny-bert", str(data), str(tmp_path / "out"), **TRIAL_OPTIONS)
    assert not (tmp_path / "out").exists()


def test_calib_file_leaves_data_to_validation():
    from autolite.search.data import split_indices

    parts = split_indices(40, has_test=True, has_calib=True)
    assert parts["calib"] == [] and parts["test"] == [] and sorted(parts["val"]) == list(range(40))
    parts = split_indices(40, has_test=False)
    assert len(parts["test"]) == 8 and not set(parts["test"]) & (set(parts["val"]) | set(parts["calib"]))
