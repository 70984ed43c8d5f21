"""``autolite.runtime`` layers: probe -> backends -> search, imports downward only (read from the source)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from autolite.runtime import LAYERS

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "tools" / "import_cycles.py")
import_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_cycles)
GRAPH = import_cycles.edges(ROOT / "autolite")
RANK = {f"autolite.runtime.{m}": rank for rank, layer in enumerate(LAYERS.values()) for m in layer}
# Packages above runtime (ARCHITECTURE.md): runtime must not import them
ABOVE = ("autolite.dynamic", "autolite.distill", "autolite.search", "autolite.serve", "autolite.report",
         "autolite.cli")


def test_every_runtime_module_has_a_layer():
    modules = {m for m in GRAPH if m.startswith("autolite.runtime.")}
    assert modules == set(RANK), modules ^ set(RANK)


def test_runtime_imports_only_its_own_or_lower_layers():
    upward = [(m, t) for m in RANK for t in GRAPH[m] if t in RANK and RANK[t] > RANK[m]]
    assert upward == []


def test_runtime_imports_no_package_above_it():
    upward = {(m, t) for m in RANK for t in GRAPH[m] if t.startswith(ABOVE + ("autolite.export",))}
    assert upward == set()
