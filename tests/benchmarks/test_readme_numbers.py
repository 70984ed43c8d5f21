"""``benchmarks/readme_numbers.py``: the README's numbers are the ones the benchmark JSON gives."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_numbers  # noqa: E402 - the benchmark helper, importable once its folder is on the path


def test_readme_numbers_block_is_generated_from_the_json() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(readme_numbers.BEGIN), readme.index(readme_numbers.END) + len(readme_numbers.END)
    assert readme[start:end] == readme_numbers.render(), (
        "README numbers differ from benchmarks/results: run `python benchmarks/readme_numbers.py`")


def test_every_table_names_its_command() -> None:
    block = readme_numbers.render()
    tables = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line]
    assert tables, "no table rendered from the committed JSON"
    assert block.count("`python benchmarks/") >= 5  # each section says which command wrote its numbers
