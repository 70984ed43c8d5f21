"""``benchmarks/peers.py``: a contender whose build would not fit in the memory left is skipped, with the reason."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import peers  # noqa: E402 - the benchmark script, importable once its folder is on the path


def test_a_build_that_fits_is_not_refused() -> None:
    assert peers.memory_short(fp32_mb=400, available_mb=20_000) is None


def test_a_build_that_does_not_fit_is_skipped_with_the_numbers() -> None:
    why = peers.memory_short(fp32_mb=1400, available_mb=3000)
    assert why is not None and "3000 MiB" in why and f"{peers.BUILD_MEMORY_FACTOR * 1400} MiB" in why
