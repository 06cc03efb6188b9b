"""Checkpoint files that cannot execute code when loaded, written atomically, checked on load.

A checkpoint is a zip archive holding ``meta.json`` (JSON: format tag, version, config, anything the
caller adds, and the SHA-256 of every array) and one ``.npy`` file per array under ``arrays/``. Arrays
are read with ``allow_pickle=False``, so loading never unpickles anything. Writing goes to a temporary
file in the same folder, is flushed to disk, then renamed over the target: a crash at any moment leaves
either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from relpsp._fileio import atomic_write_with, json_text, remove_stale_temp_files, why_not_a_file

__all__ = [
    "FORMAT",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_with",
    "load_checkpoint",
    "read_checkpoint_meta",
    "remove_stale_temp_files",
    "save_checkpoint",
]

FORMAT = "relpsp-checkpoint/1"
_META = "meta.json"
_PREFIX = "arrays/"
#: Fault-injection hook for the tests (tests/test_faults.py). When this environment variable holds
#: ``"N:SECONDS"``, every ``atomic_write_bytes`` call of the process after its first N writes the first half
#: of the data to the temporary file, flushes it, and sleeps SECONDS before finishing, so that a test can
#: kill the process while a file is half-written. Unset in normal use.
FAULT_PAUSE_ENV = "RELPSP_FAULT_WRITE_PAUSE"
_writes_done = 0


def _fault_pause() -> float:
    global _writes_done
    spec = os.environ.get(FAULT_PAUSE_ENV)
    _writes_done += 1
    if not spec:
        return 0.0
    after, _, seconds = spec.partition(":")
    return float(seconds) if _writes_done > int(after) else 0.0


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a relpsp checkpoint."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename). The file
    gets the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it owner-only)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pause = _fault_pause()
            if pause > 0:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(pause)
                f.write(data[len(data) // 2 :])
            else:
                f.write(data)

    atomic_write_with(path, write)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _storable(dtype: np.dtype) -> bool:
    """The arrays a checkpoint holds: boolean, integer or float, at most 64 bits (no objects)."""
    return not dtype.hasobject and dtype.kind in "biuf" and dtype.itemsize <= 8


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Save named NumPy arrays (numeric dtypes only) and JSON-serialisable ``meta`` atomically."""
    buf = io.BytesIO()
    digests = {}
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            a = np.asarray(arr)
            if not _storable(a.dtype):
                raise ValueError(
                    f"array {name!r} has dtype {a.dtype}; only boolean, integer and float arrays of at most "
                    "64 bits can be saved"
                )
            digests[name] = _sha256(a)
            with zf.open(_PREFIX + name + ".npy", "w") as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
        full = {**meta, "format": FORMAT, "sha256": digests}
        zf.writestr(_META, json_text(full, sort_keys=True))  # strict JSON: a NaN metric is written as null
    atomic_write_bytes(path, buf.getvalue())


def _read_npy(data: bytes, what: str) -> np.ndarray:
    """An ``.npy`` entry, its header checked first: numpy would allocate the shape the header claims before
    reading a byte, so a tiny entry claiming 10**15 values must be refused, not allocated. Only plain
    numeric arrays whose data fills the entry exactly are read."""
    bio = io.BytesIO(data)
    version = np.lib.format.read_magic(bio)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(bio)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(bio)
    else:
        raise CheckpointError(f"{what} uses .npy format {version}, which relpsp does not write")
    if not _storable(dtype):
        raise CheckpointError(f"{what} has dtype {dtype}: checkpoints hold numeric arrays of at most 64 bits")
    # a shape numpy cannot even size (a bool, a negative or a product beyond int64; (0, 2**64) holds 0 bytes)
    ints = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    if not ints or math.prod(d for d in shape if d) * dtype.itemsize >= 2**62:
        raise CheckpointError(f"{what} claims shape {shape!r}: the file is damaged")
    if len(data) - bio.tell() != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(
            f"{what} claims shape {shape} of {dtype} but holds {len(data) - bio.tell()} bytes: the file is damaged"
        )
    bio.seek(0)
    return np.lib.format.read_array(bio, allow_pickle=False)


def _read_meta(zf: zipfile.ZipFile, path: Path) -> tuple[dict[str, Any], set[str]]:
    """The checked ``meta.json`` of an open checkpoint and the archive's entry names."""
    infos = zf.infolist()
    names = {info.filename for info in infos}
    # relpsp writes stored (uncompressed), unencrypted entries only: refusing others refuses
    # compression bombs, and entries of more bytes in all than the file has refuses stored entries
    # that overlap (each one spanning the next), which would expand a small file quadratically.
    if any(info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x61 for info in infos):
        raise CheckpointError(f"{path} holds compressed or encrypted entries: not a relpsp checkpoint")
    if len(names) != len(infos) or sum(info.file_size for info in infos) > path.stat().st_size:
        raise CheckpointError(f"{path} holds repeated or overlapping entries: the file is damaged")
    if _META not in names:
        raise CheckpointError(f"{path} is not a relpsp checkpoint (no {_META} inside)")
    meta = json.loads(zf.read(_META))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has format {got!r}; this relpsp reads {FORMAT!r}")
    return meta, names


def _damaged(path: Path, e: Exception) -> CheckpointError:
    # an untrusted file: whatever the zip and .npy readers trip on (BadZipFile, OSError,
    # NotImplementedError for an unknown zip feature, OverflowError, ...) means the same here
    return CheckpointError(
        f"{path} is truncated, corrupted or not a relpsp checkpoint ({type(e).__name__}: {e}); "
        "use an earlier checkpoint or retrain"
    )


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata (config, progress, ...) of a checkpoint without reading or checking its arrays: for
    listing runs. :class:`CheckpointError` as :func:`load_checkpoint` for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {why_not_a_file(path)}")
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_meta(zf, path)[0]
    except CheckpointError:
        raise
    except Exception as e:
        raise _damaged(path, e) from e


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load ``(arrays, meta)``; raise :class:`CheckpointError` saying what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {why_not_a_file(path)}")
    try:
        with zipfile.ZipFile(path) as zf:
            meta, names = _read_meta(zf, path)
            digests = meta.get("sha256", {})
            if not isinstance(digests, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
            ):
                raise CheckpointError(f"{path} has a malformed array table in {_META}: the file is damaged")
            arrays = {}
            for name, digest in digests.items():
                entry = _PREFIX + name + ".npy"
                if entry not in names:
                    raise CheckpointError(f"{path} is missing array {name!r}: the file is damaged")
                with zf.open(entry) as f:
                    a = _read_npy(f.read(), f"{path}: array {name!r}")
                if _sha256(a) != digest:
                    raise CheckpointError(f"{path}: array {name!r} fails its SHA-256 check: the file is corrupted")
                arrays[name] = a
    except CheckpointError:
        raise
    except Exception as e:
        raise _damaged(path, e) from e
    return arrays, meta
