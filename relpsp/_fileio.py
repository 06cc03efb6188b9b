"""Atomic file writes and strict JSON text (standard library only, so that every layer of the package may
use them)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_with",
    "check_output_file",
    "json_text",
    "json_value",
    "remove_stale_temp_files",
    "why_not_a_file",
]


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


def remove_stale_temp_files(path: str | os.PathLike, min_age_s: float = 0.0) -> list[Path]:
    """Delete the temporary files that ``atomic_write_with`` calls for ``path`` left behind when their
    process was killed (``.<name>.*.tmp`` beside it: a signal ends the process without the clean-up that an
    error runs); return what was removed. Only files untouched for ``min_age_s`` seconds go, so that with a
    ``min_age_s`` longer than any write, a process writing ``path`` beside the caller keeps its own; with
    0, only call it when no other process writes ``path``."""
    path = Path(path)
    removed = []
    now = time.time()
    for p in sorted(path.parent.glob(f".{path.name}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime >= min_age_s:
                p.unlink()
                removed.append(p)
    return removed


def check_output_file(out: str | os.PathLike, *inputs: str | os.PathLike, what: str = "output file") -> Path:
    """``out`` as a path, refused before any work if it is a folder, if a folder above it is a file (it
    could not be created), or if it is the same file as one of ``inputs`` (writing it would replace the
    file being read)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"the {what} {path} is a folder; give a file name")
    above = path.parent
    while not above.exists() and above != above.parent:  # the nearest existing folder above (made on write)
        above = above.parent
    if above.exists() and not above.is_dir():
        raise ValueError(f"the {what} {path} cannot be written: {above} is a file, not a folder")
    for source in inputs:
        src = Path(source)
        same = src.exists() and path.exists() and os.path.samefile(src, path)
        if same or path.resolve() == src.resolve():
            raise ValueError(f"the {what} {path} would overwrite {src}, which it is made from")
    return path


def why_not_a_file(path: str | os.PathLike) -> str:
    """Why an input ``path`` that is not a regular file cannot be read, for an error message."""
    p = Path(path)
    if p.is_dir():
        return "is a folder, not a file"
    return "is not a regular file (a pipe or a device?)" if p.exists() else "does not exist"


def json_value(v: Any) -> Any:
    """``v`` as plain JSON values, recursively: NaN and infinities become ``None`` (strict JSON has neither,
    and ``jq`` or a browser refuse them), NumPy and torch scalars and arrays become Python numbers and
    lists (found by their ``item`` / ``tolist`` methods, so that this module needs neither), tuples become
    lists, mapping keys become text, and anything else becomes its text."""
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:  # an array
        return json_value(v.tolist())
    if hasattr(v, "item"):  # a NumPy or torch scalar
        try:
            return json_value(v.item())
        except (TypeError, ValueError):
            pass
    return str(v)


def json_text(obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> str:
    """``obj`` as strict JSON text (through :func:`json_value`; never ``NaN`` or ``Infinity``)."""
    return json.dumps(json_value(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
