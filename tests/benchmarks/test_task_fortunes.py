"""``benchmarks/task_fortunes.py``: a reused fine-tune keeps the time recorded when it ran."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import task_fortunes  # noqa: E402 - the benchmark script, importable once its folder is on the path


def test_the_last_record_is_read_back_and_a_missing_or_broken_one_is_empty(tmp_path):
    assert task_fortunes._recorded(tmp_path) == {}
    (tmp_path / "fp32.json").write_text("{not json")
    assert task_fortunes._recorded(tmp_path) == {}
    (tmp_path / "fp32.json").write_text(json.dumps({"fine_tune_s": 340.6}))
    assert task_fortunes._recorded(tmp_path)["fine_tune_s"] == 340.6
