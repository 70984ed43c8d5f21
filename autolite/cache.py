"""The cache of rebuildable artifacts: where it lives, how large it may grow, and what goes first past that.

Backends write what they build once and reuse it: ONNX graphs (``onnxruntime/``), OpenVINO IRs (``openvino/``),
memory-mapped weights (``weights/``), GGUF files converted to safetensors (``gguf/``), and the benchmarks' compressed
models. A large model costs GBs per entry, so the cache keeps to ``$AUTOLITE_CACHE_MAX_GB`` (default 20): after each
write the least recently used entries are removed until it fits, and temporaries left by a killed build go too.
Measurements (``fast-dense/``, ``peaks/``, ``optimize-speed/``) and fine-tuned tasks (``tasks/``) are small or
costly to redo, and are never evicted.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

from autolite.errors import AutoliteError

log = logging.getLogger(__name__)

ROOT_ENV, LIMIT_ENV = "AUTOLITE_CACHE", "AUTOLITE_CACHE_MAX_GB"
DEFAULT_LIMIT_GB = 20.0
REBUILDABLE = ("onnxruntime", "openvino", "weights", "gguf", "decode_bench", "export_quality")
STALE_TEMP_S = 6 * 3600  # a temporary this old belongs to a build that was killed (no build takes hours)


class CacheConfigError(AutoliteError):
    """``$AUTOLITE_CACHE_MAX_GB`` is not a size."""


def cache_root() -> Path:
    """Where built artifacts are cached (``$AUTOLITE_CACHE`` or ``~/.cache/autolite``)."""
    return Path(os.environ.get(ROOT_ENV, Path.home() / ".cache" / "autolite"))


def cache_limit() -> int:
    """The most bytes the rebuildable entries may hold (``$AUTOLITE_CACHE_MAX_GB``, GB of 10^9 bytes)."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return int(DEFAULT_LIMIT_GB * 1e9)
    try:
        limit_gb = float(raw)
    except ValueError:
        limit_gb = math.nan
    if not (math.isfinite(limit_gb) and limit_gb >= 0):
        raise CacheConfigError(f"{LIMIT_ENV}={raw!r} is not a size in GB; set a number >= 0 (e.g. 20) or unset it")
    return int(limit_gb * 1e9)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One cached artifact: a directory, or the files sharing a key (``<key>.xml`` + ``<key>.bin``)."""

    kind: str
    key: str
    paths: tuple[Path, ...]
    size: int  # bytes
    used: float  # last use (newest mtime; a hit refreshes it)


def is_temporary(name: str) -> bool:
    """A build's temporary: ``tempfile``'s ``tmp*`` or ``autolite.io``'s ``.<name>.tmp-*`` / ``.<name>.old-*``."""
    return name.startswith("tmp") or (name.startswith(".") and (".tmp-" in name or ".old-" in name))


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())
    return path.lstat().st_size


def _last_use(path: Path) -> float:
    return path.lstat().st_mtime


def _remove(path: Path) -> None:
    """Unlink a file or a tree; an entry another process removed first, or one still open, is no error (on Linux
    a mapped file stays readable by whoever maps it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def entries(root: Path | None = None) -> list[Entry]:
    """Every complete rebuildable entry under the cache, oldest use first."""
    root = root or cache_root()
    found = []
    for kind in REBUILDABLE:
        groups: dict[str, list[Path]] = {}
        for path in sorted((root / kind).iterdir()) if (root / kind).is_dir() else ():
            if not is_temporary(path.name):
                key = path.name if path.is_dir() else path.name.split(".")[0]
                groups.setdefault(key, []).append(path)
        for key, paths in groups.items():
            try:
                found.append(Entry(kind, key, tuple(paths), sum(map(_size, paths)), max(map(_last_use, paths))))
            except FileNotFoundError:  # removed by another process while we looked
                continue
    return sorted(found, key=lambda entry: entry.used)


def mark_used(*paths: Path) -> None:
    """Record a cache hit (least recently used goes first)."""
    for path in paths:
        try:
            os.utime(path)
        except OSError:  # read-only cache or removed meanwhile: the order is a hint, not a must
            pass


def remove_stale_temporaries(root: Path | None = None, older_than_s: float = STALE_TEMP_S) -> int:
    """Remove what builds that were killed left behind; returns the bytes freed."""
    root, freed, cutoff = root or cache_root(), 0, time.time() - older_than_s
    for kind in REBUILDABLE:
        for path in (root / kind).iterdir() if (root / kind).is_dir() else ():
            try:
                if is_temporary(path.name) and _last_use(path) < cutoff:
                    size = _size(path)
                    _remove(path)
                    freed += size
            except FileNotFoundError:
                continue
    return freed


def trim(limit: int | None = None, keep: Iterable[Path] = (), root: Path | None = None) -> list[Entry]:
    """Evict the least recently used entries until the cache holds at most ``limit`` bytes (default
    :func:`cache_limit`), never one holding a path in ``keep``; returns what was evicted."""
    limit = cache_limit() if limit is None else limit
    remove_stale_temporaries(root)
    current = entries(root)
    total, kept = sum(entry.size for entry in current), {Path(p).absolute() for p in keep}
    evicted = []
    for entry in current:
        if total <= limit:
            break
        if any(path.absolute() in kept for path in entry.paths):
            continue
        for path in entry.paths:
            _remove(path)
        total -= entry.size
        evicted.append(entry)
        log.info("cache over %.1f GB: evicted %s/%s (%.2f GB, unused longest)", limit / 1e9, entry.kind,
                 entry.key, entry.size / 1e9)
    return evicted


def stored(*paths: Path) -> None:
    """After writing ``paths`` into the cache: keep it under its limit, ``paths`` themselves spared."""
    trim(keep=paths)


def clear(root: Path | None = None) -> int:
    """Remove every rebuildable entry and temporary (measurements and tasks stay); returns the bytes freed."""
    root, freed = root or cache_root(), 0
    for kind in REBUILDABLE:
        if (root / kind).is_dir():
            freed += _size(root / kind)
            _remove(root / kind)
    return freed
