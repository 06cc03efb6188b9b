"""The run folder: its files, the lock that keeps a second process out, the atomic writes of
``metrics.jsonl`` and ``results.json`` (strict JSON: a non-finite number is written as ``null``), and the
reader of ``metrics.jsonl``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relpsp._fileio import json_text
from relpsp.checkpoint import atomic_write_bytes
from relpsp.train.checkpointing import CHECKPOINT_NAME

__all__ = [
    "DERIVED_FILES",
    "LOCK_NAME",
    "RUN_FILES",
    "is_training",
    "read_metrics",
    "run_folder_lock",
    "write_json",
    "write_metrics",
]


LOCK_NAME = ".relpsp.lock"
#: the files of a run folder that a run writes (and a new run into the folder would replace)
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "results.json")
#: files other commands write into a run folder as the README shows them (relpsp plot; relpsp export RUN/model.nir)
DERIVED_FILES = ("curves.png", "output_times.png", "raster.png", "model.nir")


def write_json(path: Path, obj: Any) -> None:
    """``path`` as strict, key-sorted JSON (a non-finite number as ``null``), written atomically."""
    atomic_write_bytes(path, (json_text(obj, sort_keys=True) + "\n").encode())


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``out/metrics.jsonl``: one strict JSON line per finished epoch (a non-finite number as ``null``),
    written atomically."""
    atomic_write_bytes(out / "metrics.jsonl", "".join(json_text(r, indent=None) + "\n" for r in history).encode())


_METRIC_KEYS = ("epoch", "train_loss", "train_accuracy")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``, with ``null`` (how a run writes a non-finite number) read as NaN; a
    line that is not a JSON object with numbers for ``epoch`` (a whole number >= 1), ``train_loss`` and
    ``train_accuracy`` raises ``ValueError`` naming the file and line."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text (JSON lines) file ({e.reason} at byte {e.start})") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}, line {n}: not JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        row = {k: math.nan if v is None and k != "epoch" else v for k, v in row.items()}
        bad = [k for k in _METRIC_KEYS if isinstance(row.get(k), bool) or not isinstance(row.get(k), (int, float))]
        if bad:
            raise ValueError(f"{path}, line {n}: missing or non-numeric {', '.join(bad)}")
        epoch = row["epoch"]
        if not (math.isfinite(epoch) and epoch == int(epoch) and epoch >= 1):
            raise ValueError(f"{path}, line {n}: epoch must be a whole number >= 1, got {epoch}")
        rows.append(row)
    return rows


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


def is_training(out: Path) -> bool:
    """Whether a process holds ``out``'s run lock now (a run is training into it). Creates nothing; False
    where there is no lock file or no ``flock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock to see
        return False
    try:
        f = open(out / LOCK_NAME)  # for reading: creates nothing; closed below
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False
