"""``autolite cache``: what the build cache holds, and trimming or clearing it."""
from __future__ import annotations

import typer

from autolite.cache import LIMIT_ENV, REBUILDABLE, cache_limit, cache_root, clear, entries, trim
from autolite.cli.common import console, flag, rows_table


def _summary_rows() -> list[tuple[str, ...]]:
    found = entries()
    rows = []
    for kind in REBUILDABLE:
        mine = [entry for entry in found if entry.kind == kind]
        if mine:
            rows.append((kind, str(len(mine)), f"{sum(e.size for e in mine) / 1e9:.2f} GB"))
    rows.append(("total", str(len(found)), f"{sum(e.size for e in found) / 1e9:.2f} GB"))
    return rows


def cache(clear_all: bool = flag(False, "--clear", help="Remove every rebuildable entry (graphs, IRs, weights)."),
          trim_now: bool = flag(False, "--trim", help="Evict least recently used entries down to the limit now.")
          ) -> None:
    """Show the cache of built graphs, IRs and weights (kept under $AUTOLITE_CACHE_MAX_GB, default 20 GB)."""
    limit = cache_limit()
    if clear_all:
        console.print(f"cleared {clear() / 1e9:.2f} GB from {cache_root()}", highlight=False)
    elif trim_now:
        evicted = trim(limit)
        console.print(f"evicted {len(evicted)} entries ({sum(e.size for e in evicted) / 1e9:.2f} GB)",
                      highlight=False)
    console.print(f"{cache_root()}: rebuilt on demand, kept under {limit / 1e9:g} GB ({LIMIT_ENV})", highlight=False)
    console.print(rows_table("cached builds", ("kind", "entries", "size"), _summary_rows()))


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: AUTOLITE_CACHE_MAX_GB=5 autolite cache --trim")(cache)
