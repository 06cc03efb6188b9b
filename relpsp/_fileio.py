"""Atomic file writes (standard library only, so that every layer of the package may use them)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_with"]


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it before Python 3.13; restored at once
    os.umask(mask)
    return mask


#: the process's file-creation mask, read once at import (reading it means setting it, which is not safe
#: while other threads create files)
_UMASK = _read_umask()


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Atomically replace ``path`` with the file that ``write(tmp)`` creates at the temporary path ``tmp``
    (in the same folder, so the rename is atomic; for writers that need a path, such as HDF5). The file is
    fsynced before the rename; if ``write`` fails, ``path`` is untouched and the temporary file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable where the platform allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
