"""Output targets checked before any work: a directory or file autolite can create (or replace) atomically.

``autolite.io.atomic_dir`` / ``atomic_file`` write to a temporary beside the target and rename it; these checks
refuse the targets a rename cannot serve (the current directory, a file where a directory goes, a parent that is
a file, a directory where a file goes) while nothing has been computed yet.
"""
from __future__ import annotations

import os
from pathlib import Path

from autolite.errors import AutoliteError


class OutputPathError(AutoliteError):
    """An output path that cannot be written (or replaced) as asked."""


class OutputExistsError(OutputPathError):
    """The output exists and replacing it was not asked for (``overwrite=True``; the CLI's ``--force``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"output directory {path} already exists (overwrite=True replaces it)")
        self.path = path


def check_output_dir(target: str | Path, *, overwrite: bool = False) -> Path:
    """``target`` as a Path, after checking that a new directory can be renamed onto it."""
    target = Path(target)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or not resolved.name:
        raise OutputPathError(f"output directory '{target}' is the current directory or one of its parents; "
                              "name a new directory inside it instead")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputPathError(f"output '{target}' exists and is not a directory; remove it or name a directory")
    if target.exists() and not overwrite:
        raise OutputExistsError(target)
    check_parent(target)
    return target


def check_output_file(path: str | Path) -> Path:
    """``path`` as a Path, after checking that a file can be renamed onto it (replaced if it exists)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output file '{path}' is a directory; name a file (e.g. {path / 'result.json'})")
    check_parent(path)
    return path


def check_parent(target: Path) -> None:
    """Refuse ``target`` when its nearest existing ancestor is a file, or a directory this process cannot write."""
    ancestor = target.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot create '{target}': '{ancestor}' is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot create '{target}': no write permission in '{ancestor}'")


def publish_permissions(directory: Path) -> None:
    """Give every file under ``directory`` the mode an ordinary new file gets (0644 under umask 022): tools that
    write through ``mkstemp`` (safetensors shards) leave 0600 files that other users and containers cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)
