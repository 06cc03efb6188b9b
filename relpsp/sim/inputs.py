"""Images for the simulator: a named dataset through ``relpsp.data.load_dataset`` or an ``.npz`` file.

Intensities are float in [0, 1], ``[N, C, H, W]`` or ``[N, F]``; labels are integers ``[N]``. An
``.npz`` file holds the arrays ``x`` and ``y`` (read with ``allow_pickle=False``), or is a dataset archive
of splits (``x_train``, ``y_train``, ``x_test``, ``y_test``, ...; ``relpsp.data.npz``), read through
``relpsp.data.load_dataset`` like a named dataset. The latency code ``t = t_in * (1 - x)`` is applied
later, by the simulator.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["inputs_from_arrays", "is_inputs_file", "is_split_archive", "load_inputs"]


def is_split_archive(path: str | os.PathLike) -> bool:
    """Whether the ``.npz`` file at ``path`` is a dataset archive of splits (no array ``x``) rather than one
    set of inputs ``x`` and ``y``; an unreadable file counts as inputs, whose reader then names the fault."""
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.removesuffix(".npy") for n in z.namelist()}
    except (zipfile.BadZipFile, OSError):
        return False
    return "x" not in names and any(n.startswith("x_") for n in names)


def is_inputs_file(dataset: str | os.PathLike) -> bool:
    """Whether ``dataset`` names an ``.npz`` file of one set of inputs ``x`` and ``y``, read as it is (no
    loader options, no preprocessing), rather than a dataset (a registered one or an archive of splits)."""
    from relpsp.data.npz import is_npz_name

    return is_npz_name(dataset) and not is_split_archive(dataset)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an ``.npz`` archive; anything else (a bare ``.npy`` file, a truncated or
    corrupt archive, object arrays) is a ``ValueError`` naming the file."""
    from relpsp.data.npz import open_archive, read_array

    with open_archive(path, "write it with numpy.savez(path, x=..., y=...)") as f:
        missing = {"x", "y"} - set(f.files)
        if missing:
            raise ValueError(f"{path} must hold arrays 'x' and 'y'; missing {sorted(missing)}")
        return read_array(f, "x", path), read_array(f, "y", path)


def _to_numpy(a: object, what: str) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, converted without importing torch here
        a = a.detach().cpu().numpy()  # type: ignore[attr-defined]
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":  # objects, strings, and complex numbers (whose cast drops a part)
        raise ValueError(f"{what} is not a real numeric array (dtype {arr.dtype})")
    return arr


def load_inputs(
    dataset: str,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x float64 [N, ...] in [0, 1], y int64 [N])``, the first ``limit`` samples when given.

    ``dataset`` ending in ``.npz`` is read as a file of arrays ``x`` and ``y`` (``split``, ``data_dir`` and
    ``options`` ignored), unless it is a dataset archive of splits (``is_split_archive``); that and any other
    name go to ``relpsp.data.load_dataset(name, split, data_dir, **options)`` (loader options such as
    Caltech's ``image_size`` or Yin-Yang's ``bias``: those the network was trained with).
    """
    _check_limit(limit)  # before the data are read
    if is_inputs_file(dataset):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {path} does not exist")
        x_raw: Any
        y_raw: Any
        x_raw, y_raw = _read_npz(path)
    else:
        try:
            from relpsp.data import load_dataset
        except ImportError as e:
            raise RuntimeError(f"relpsp.data.load_dataset is not available ({e}); pass an .npz file instead") from e
        loaded = load_dataset(dataset, split, data_dir, **dict(options or {}))
        x_raw, y_raw = loaded[0], loaded[1]
    return inputs_from_arrays(x_raw, y_raw, limit, f"{dataset} ({split})")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")


def inputs_from_arrays(
    x_raw: Any, y_raw: Any, limit: int | None = None, what: str = "the data"
) -> tuple[np.ndarray, np.ndarray]:
    """``(x float64, y int64)`` from arrays or tensors of images and labels, checked as ``load_inputs``
    checks what it reads, the first ``limit`` samples when given; ``what`` names them in errors."""
    _check_limit(limit)
    x = _to_numpy(x_raw, "x").astype(np.float64, copy=False)
    y = _to_numpy(y_raw, "y")
    if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x [N, ...] and y [N], got shapes {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(y) == 0:
        raise ValueError(f"{what} holds no samples")
    return x, y.astype(np.int64)
