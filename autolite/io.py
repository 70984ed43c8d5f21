"""File helpers: atomic output directories and safe weight-file checks."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from safetensors import safe_open

from autolite.errors import CorruptWeightsError
from autolite.paths import check_output_dir, check_output_file, publish_permissions

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it to ``target`` only on success.

    On any error the temporary directory is removed, so ``target`` is never half-written.
    """
    target = check_output_dir(target, overwrite=overwrite)  # impossible or taken targets: refused before any work
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        publish_permissions(tmp)  # files written through mkstemp (safetensors) would stay 0600
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix); rename it onto ``target`` only on success.

    On any error the temporary file is removed, so ``target`` is never half-written.
    """
    target = check_output_file(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; the result is an ordinary output file
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2) -> None:
    """Write ``data`` as JSON to ``path`` atomically (values JSON cannot hold are written as strings)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=str), encoding="utf-8")


def check_safetensors(directory: Path) -> list[Path]:
    """Return the directory's safetensors files after checking each header and size.

    Raises :class:`CorruptWeightsError` for a truncated/corrupt file, or when only pickle
    checkpoints (which autolite never unpickles) are present.
    """
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise CorruptWeightsError(
                f"{directory} has only pickle weights ({', '.join(pickles)}); autolite loads safetensors only "
                "(pickle can run code): convert them with transformers' save_pretrained(safe_serialization=True)")
        raise CorruptWeightsError(f"{directory} has no *.safetensors weights; is it a complete model directory?")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:  # validates header and data length
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise CorruptWeightsError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]}); "
                                      "re-download or re-export the model") from exc
    return files
