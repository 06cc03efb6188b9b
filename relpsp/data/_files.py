"""File helpers shared by the readers: data directory, errors, checksums, atomic writes."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

from relpsp._fileio import atomic_write_with

__all__ = [
    "MAX_GUNZIP_BYTES",
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
    if not str(data_dir).strip():  # Path("") would silently be the current folder
        raise ValueError("the data directory is empty; leave it unset for $RELPSP_DATA or ~/.cache/relpsp")
    return Path(data_dir).expanduser()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Most bytes a gzipped dataset file may expand to (the largest IDX file, MNIST's training images, is
#: 47 MB): a small file cannot expand without bound (a "gzip bomb") before its checksum is compared.
MAX_GUNZIP_BYTES = 256 << 20


def gunzip_if_gzip(raw: bytes, name: str, fix: str, max_bytes: int | None = None) -> bytes:
    """``raw`` decompressed if it starts with the gzip magic, else ``raw``. Damaged gzip data, or data that
    would expand past ``max_bytes`` (default ``MAX_GUNZIP_BYTES``), raises DatasetCorruptError
    (decompression stops at the limit)."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    if max_bytes is None:
        max_bytes = MAX_GUNZIP_BYTES
    out = bytearray()
    data = raw
    try:
        while data.strip(b"\0"):  # one gzip member after another; trailing zero padding ends it, as in gzip
            d = zlib.decompressobj(wbits=31)
            out += d.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes or d.unconsumed_tail:
                raise DatasetCorruptError(
                    f"{name}: gzip data expands past {max_bytes} bytes: not a dataset file; delete it and {fix}"
                )
            if not d.eof:
                raise EOFError("compressed data ended before the end-of-stream marker")
            data = d.unused_data
    except (EOFError, zlib.error) as e:
        raise DatasetCorruptError(f"{name}: damaged gzip data ({e}); {fix}") from None
    return bytes(out)


def read_maybe_gzip(path: Path, fix: str) -> bytes:
    """The bytes of ``path``, decompressed if gzipped (at most ``MAX_GUNZIP_BYTES``)."""
    return gunzip_if_gzip(path.read_bytes(), str(path), fix)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_write_with``)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))
