"""File helpers shared by the readers: data directory, errors, checksums, atomic writes."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

__all__ = [
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "atomic_write_bytes",
    "data_root",
    "gunzip_if_gzip",
    "read_maybe_gzip",
    "sha256_bytes",
    "sha256_file",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message names the file and how to get it."""


class DatasetCorruptError(ValueError):
    """A dataset file is truncated, malformed or fails its checksum; the message names the file and the fix."""


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$RELPSP_DATA``, else ``~/.cache/relpsp``."""
    if data_dir is None:
        data_dir = os.environ.get("RELPSP_DATA") or "~/.cache/relpsp"
    return Path(data_dir).expanduser()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gunzip_if_gzip(raw: bytes, name: str, fix: str) -> bytes:
    """``raw`` decompressed if it starts with the gzip magic, else ``raw``; damaged gzip -> DatasetCorruptError."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetCorruptError(f"{name}: damaged gzip data ({e}); {fix}") from None


def read_maybe_gzip(path: Path, fix: str) -> bytes:
    """The bytes of ``path``, decompressed if gzipped."""
    return gunzip_if_gzip(path.read_bytes(), str(path), fix)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
