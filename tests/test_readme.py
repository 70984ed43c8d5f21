"""The README's code blocks marked runnable (```python runnable, ```bash runnable) run as written.

Each block runs in a fresh temporary directory, in its own process (python blocks with this interpreter, bash
blocks with this virtual environment's ``autolite`` first on PATH); a block fails the test when it exits
non-zero or prints a traceback or an internal error. Blocks without the marker (``make demo``, excerpts) are
documentation only.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(python|bash) +runnable[^\n]*\n(.*?)^```", re.M | re.S)


def runnable_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number) of each fenced block whose info string says ``runnable``."""
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def test_extracts_only_marked_blocks():
    text = "x\n```python runnable\nprint(1)\n```\n```python\nskip()\n```\n```bash runnable\necho hi\n```\n"
    assert runnable_blocks(text) == [("python", "print(1)\n", 2), ("bash", "echo hi\n", 8)]


BLOCKS = runnable_blocks(README.read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("language,code,line", BLOCKS or [pytest.param("", "", 0, marks=pytest.mark.skip(
    reason="the README marks no block runnable"))], ids=[f"README.md:{b[2]}" for b in BLOCKS] or None)
def test_readme_block_runs_as_written(language, code, line, tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               HF_HUB_OFFLINE="1", AUTOLITE_CACHE=os.environ.get("AUTOLITE_CACHE", str(Path.home() / ".cache" /
                                                                                           "autolite")))
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README.md:{line} exited {done.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output and "internal error" not in output, f"README.md:{line}:\n{output[-3000:]}"
