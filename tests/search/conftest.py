"""A tiny labeled task (corpus sentences, label = long or short) and one tiny search shared by the tests."""
from __future__ import annotations

import csv

import pytest

TRIAL_OPTIONS = dict(trials=2, minutes=None, batch=2, seq=16, recover_steps=2, max_drop=100.0,
                     backends=["fp32", "int8-dynamic"], speed_runs=2, final_runs=3)


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def labeled_rows():
    from autolite.data import corpus

    return [(text, int(len(text) > 90)) for text in corpus().texts[:60]]


@pytest.fixture(scope="session")
def labeled_csv(tmp_path_factory, labeled_rows):
    return write_csv(tmp_path_factory.mktemp("data") / "labeled.csv", labeled_rows)


@pytest.fixture(scope="session")
def searched(tmp_path_factory, labeled_csv):
    """One finished 2-trial search of random:tiny-bert: (output directory, optimize.json content)."""
    from autolite.search import optimize

    out = tmp_path_factory.mktemp("optimize") / "run"
    return out, optimize("random:tiny-bert", str(labeled_csv), str(out), **TRIAL_OPTIONS)
