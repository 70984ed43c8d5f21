"""``benchmarks/decode_bench.py``: how separately measured sections merge into the decode results."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import decode_bench  # noqa: E402 - the benchmark script, importable once its folder is on the path


def _write(path: Path, data: dict, mtime: float) -> None:
    path.write_text(json.dumps(data))
    os.utime(path, (mtime, mtime))


def test_a_later_batching_run_replaces_the_main_run_s_by_its_recorded_date_not_its_file_time(tmp_path):
    main = tmp_path / "decode.json"
    _write(main, {"date": "2026-12-06", "speed": {"x": 1}, "batching": {"old": True}}, mtime=2e9)
    _write(tmp_path / "decode-batching.json", {"date": "2026-12-07", "batching": {"new": True}}, mtime=1e9)
    _write(tmp_path / "decode-perplexity.json", {"date": "2026-12-01", "perplexity": {"p": 2}}, mtime=1e9)
    result = decode_bench.merged(main)
    assert result["batching"] == {"new": True}  # older file time, newer measurement
    assert result["perplexity"] == {"p": 2} and result["speed"] == {"x": 1}  # a missing section is filled in
    _write(tmp_path / "decode-batching.json", {"date": "2026-12-05", "batching": {"older": True}}, mtime=3e9)
    assert decode_bench.merged(main)["batching"] == {"old": True}
