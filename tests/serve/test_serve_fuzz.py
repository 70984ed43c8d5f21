"""Schemathesis against the OpenAPI schema (slow; needs autolite[fuzz]): no generated request gets a 5xx."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_fuzz.py"


@pytest.mark.slow
def test_schemathesis_finds_no_5xx(tmp_path):
    pytest.importorskip("schemathesis", reason="pip install 'autolite[fuzz]'")
    out = tmp_path / "fuzz.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--examples", "25", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text())
    assert done.returncode == 0 and report["failures"] == [], report["failures"] or done.stderr[-3000:]
    for route in ("/v1/embeddings", "/v1/classify", "/v1/completions"):
        counts = [c for label, c in report["routes"].items() if f"POST {route} (positive)" in label]
        assert counts and all(sum(c.values()) >= 10 for c in counts), (route, counts)
        answered = {code for c in counts for code in c}
        assert "200" in answered, (route, counts)  # the valid requests really ran the model
