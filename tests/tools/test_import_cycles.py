"""``tools/import_cycles.py``: finds cycles (in-function imports included) and finds none in autolite/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "import_cycles.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_autolite_has_no_import_cycles():
    result = _run("autolite")
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_a_cycle_through_an_in_function_import_is_reported(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x  # hidden from import time, still a cycle\n")
    (pkg / "c.py").write_text("from . import a\n")
    result = _run(str(pkg), "--count")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "pkg.a <-> pkg.b"
    assert "1 in-function imports of pkg in 1 files (1 without a '# lazy: <reason>' comment); 1 cycles" in result.stdout


def test_a_lazy_import_with_a_reason_is_counted_as_explained(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x  # lazy: pulls an optional dependency\n"
                              "def g():\n    # lazy: the same, said above\n    from pkg import a\n"
                              "def h():\n    import pkg.a\n")
    result = _run(str(pkg), "--count")
    assert result.returncode == 0
    assert "3 in-function imports of pkg in 1 files (1 without a '# lazy: <reason>' comment); 0 cycles" in result.stdout
