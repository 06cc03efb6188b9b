"""The run folder: its files, the lock that keeps a second process out, and the atomic writes of
``metrics.jsonl`` and ``results.json`` (strict JSON: a non-finite number is written as ``null``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relpsp._fileio import json_text
from relpsp.checkpoint import atomic_write_bytes
from relpsp.train.checkpointing import CHECKPOINT_NAME

__all__ = ["LOCK_NAME", "RUN_FILES", "run_folder_lock", "write_json", "write_metrics"]


LOCK_NAME = ".relpsp.lock"
#: the files of a run folder that a run writes (and a new run into the folder would replace)
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "results.json")


def write_json(path: Path, obj: Any) -> None:
    """``path`` as strict, key-sorted JSON (a non-finite number as ``null``), written atomically."""
    atomic_write_bytes(path, (json_text(obj, sort_keys=True) + "\n").encode())


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``out/metrics.jsonl``: one strict JSON line per finished epoch (a non-finite number as ``null``),
    written atomically."""
    atomic_write_bytes(out / "metrics.jsonl", "".join(json_text(r, indent=None) + "\n" for r in history).encode())


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out/.relpsp.lock`` (POSIX ``flock``; nothing elsewhere) for one run:
    a second process training into the same folder is refused instead of interleaving its writes (and
    removing the first one's temporary files). The lock file stays; the lock goes with the process."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another process is training into {out}; wait for it or use another --out folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
