"""IDX files (LeCun's MNIST format), raw or gzipped.

Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian uint32 sizes, then
the data, big-endian, row-major. MNIST and Fashion-MNIST use type 0x08 (uint8): images ``[N, 28, 28]``,
labels ``[N]``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from relpsp.data._files import DatasetCorruptError, read_maybe_gzip

__all__ = ["load_idx_pair", "parse_idx", "read_idx"]

# type code -> big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a read-only array in native byte order; malformed data raises DatasetCorruptError."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetCorruptError(f"{name}: not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorruptError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around for huge claimed sizes
    if len(data) - header != expected:
        raise DatasetCorruptError(
            f"{name}: IDX shape {shape} needs {expected} data bytes, found {len(data) - header} (truncated or padded)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike[str], fix: str = "delete it and fetch it again") -> np.ndarray:
    """Read an IDX file, raw or gzipped (detected from its first bytes)."""
    path = Path(path)
    return parse_idx(read_maybe_gzip(path, fix), str(path))


def load_idx_pair(
    images: str | os.PathLike[str] | np.ndarray,
    labels: str | os.PathLike[str] | np.ndarray,
    names: tuple[str, str] | None = None,
    n_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, H, W]`` uint8 and labels ``[N]`` -> (x ``[N, 1, H, W]`` float32 in [0, 1], y ``[N]`` int64).
    ``names``: the files the arrays came from, for error messages (default: the paths, or "images"/"labels").
    ``n_classes``: when given, every label must be below it."""
    img = images if isinstance(images, np.ndarray) else read_idx(images)
    lab = labels if isinstance(labels, np.ndarray) else read_idx(labels)
    img_name, lab_name = names or tuple(
        "IDX " + kind if isinstance(src, np.ndarray) else str(src)
        for src, kind in ((images, "images"), (labels, "labels"))
    )
    if img.ndim != 3 or img.dtype != np.uint8:
        raise DatasetCorruptError(f"{img_name}: expected uint8 images [N, H, W], got {img.dtype} {img.shape}")
    if lab.ndim != 1 or lab.shape[0] != img.shape[0]:
        raise DatasetCorruptError(f"{lab_name}: expected {img.shape[0]} labels, got shape {lab.shape}")
    if lab.dtype.kind not in "iu" or (lab.size and lab.min() < 0):
        raise DatasetCorruptError(f"{lab_name}: labels must be integers >= 0, got {lab.dtype}")
    if n_classes is not None and lab.size and lab.max() >= n_classes:
        raise DatasetCorruptError(f"{lab_name}: labels must be classes 0..{n_classes - 1}, found {lab.max()}")
    # astype copies, so torch gets a writable array.
    x = torch.from_numpy(img.astype(np.float32)).div_(255.0).unsqueeze_(1)
    y = torch.from_numpy(lab.astype(np.int64))
    return x, y
