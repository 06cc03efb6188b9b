"""Your own data as one ``.npz`` archive: a dataset named by its path (``relpsp train --dataset my.npz``).

The archive (``numpy.savez`` or ``numpy.savez_compressed``) holds the arrays ``x_train``, ``y_train``,
``x_test`` and ``y_test``, and may hold ``x_val`` with ``y_val`` and ``class_names``:

- inputs ``[N, C, H, W]`` or ``[N, H, W]`` (images; the latter one channel) or ``[N, F]`` (features), of
  dtype uint8 (0..255, divided by 255), bool, or float with every value in [0, 1]; every split has the
  same sample shape;
- labels ``[N]``, integers 0..K-1;
- ``class_names``: K strings; without it K is one more than the largest label of any split and the
  classes are named "0".."K-1".

It is read with ``allow_pickle=False`` (an object array is refused, never unpickled), and any other array
name is refused, so that a misspelt split is not silently left out.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from relpsp.data._files import DatasetCorruptError, DatasetNotFoundError, atomic_write_bytes
from relpsp.data.images import read_image_folder

__all__ = [
    "NPZ_SPLITS",
    "NpzLayout",
    "is_npz_name",
    "npz_layout",
    "open_archive",
    "pack_image_folders",
    "read_array",
    "read_npz_split",
]

#: the splits an archive may hold, in this order; train and test are required
NPZ_SPLITS = ("train", "val", "test")
_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_ALLOWED = frozenset({*(f"{a}_{s}" for s in NPZ_SPLITS for a in "xy"), "class_names"})
_BAD = (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError)
HOW = (
    "an .npz dataset holds x_train, y_train, x_test, y_test (and may hold x_val, y_val, class_names): "
    "numpy.savez(path, x_train=..., ...), see docs/DATA.md"
)


def is_npz_name(name: object) -> bool:
    """Whether a dataset name is the path of an ``.npz`` archive rather than a registered dataset's name."""
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".npz")


@dataclass(frozen=True)
class NpzLayout:
    """What an archive holds: the sample shape of its inputs (images with a channel axis), the size of each
    split it has, and its class names."""

    input_shape: tuple[int, ...]
    split_sizes: dict[str, int]
    class_names: tuple[str, ...]


@contextmanager
def open_archive(path: Path, how: str) -> Iterator[np.lib.npyio.NpzFile]:
    """The ``.npz`` archive at ``path``, opened with ``allow_pickle=False``; a missing file, a file that is not
    an archive (a truncated one, a bare ``.npy``) is an error naming ``path`` and ending with ``how``."""
    if not path.is_file():
        raise DatasetNotFoundError(f"dataset file {path} does not exist; {how}")
    with open(path, "rb") as fh:  # our own handle: np.load leaves its file open when the archive is corrupt
        try:
            archive = np.load(fh, allow_pickle=False)
        except _BAD as e:
            raise DatasetCorruptError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); {how}") from e
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetCorruptError(f"{path} holds a single array, not an .npz archive of arrays; {how}")
        with archive as f:
            yield f


@contextmanager
def _archive(path: Path) -> Iterator[np.lib.npyio.NpzFile]:
    with open_archive(path, HOW) as f:
        names = set(f.files)
        unknown = sorted(names - _ALLOWED)
        missing = [n for n in _REQUIRED if n not in names]
        if ("x_val" in names) != ("y_val" in names):
            missing.append("y_val" if "x_val" in names else "x_val")
        if unknown or missing:
            what = "; ".join(
                part
                for part in (f"unknown arrays {unknown}" if unknown else "", f"missing {missing}" if missing else "")
                if part
            )
            raise DatasetCorruptError(f"{path}: {what}; {HOW}")
        yield f


def read_array(f: np.lib.npyio.NpzFile, name: str, path: Path) -> np.ndarray:
    """Array ``name`` of an open archive; an unreadable one (a pickled object array, a damaged member) is a
    ``DatasetCorruptError`` naming it."""
    try:
        return f[name]
    except _BAD as e:
        raise DatasetCorruptError(f"{path}: array {name!r} cannot be read ({type(e).__name__}: {e})") from e


def _shape_of(f: np.lib.npyio.NpzFile, name: str, path: Path) -> tuple[int, ...]:
    """The shape of an array from its header alone (the inputs need not be read to know the layout)."""
    if f.zip is None:  # a closed archive; not reached inside _archive
        return tuple(read_array(f, name, path).shape)
    try:
        with f.zip.open(f"{name}.npy") as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, _ = np.lib.format.read_array_header_2_0(fp)
            else:  # a rarer header version: read the array itself
                return tuple(read_array(f, name, path).shape)
    except (KeyError, *_BAD) as e:
        raise DatasetCorruptError(f"{path}: array {name!r} cannot be read ({type(e).__name__}: {e})") from e
    return tuple(int(n) for n in shape)


def _sample_shape(shape: tuple[int, ...], name: str, path: Path) -> tuple[int, ...]:
    if len(shape) not in (2, 3, 4) or shape[0] == 0 or 0 in shape[1:]:
        raise DatasetCorruptError(
            f"{path}: {name} has shape {shape}; give [N, C, H, W] or [N, H, W] images or [N, F] features, "
            "with N >= 1 and no empty axis"
        )
    return (1, *shape[1:]) if len(shape) == 3 else shape[1:]


def _labels(y: np.ndarray, n: int, name: str, path: Path) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise DatasetCorruptError(
            f"{path}: {name} must be {n} integer labels, one per input (shape ({n},)), got dtype {y.dtype} "
            f"and shape {y.shape}"
        )
    if y.min() < 0:
        raise DatasetCorruptError(f"{path}: {name} holds a negative label ({int(y.min())}); classes are 0..K-1")
    return y.astype(np.int64)


def _class_names(f: np.lib.npyio.NpzFile, top_label: int, path: Path) -> tuple[str, ...]:
    if "class_names" not in f.files:
        return tuple(str(k) for k in range(top_label + 1))
    names = read_array(f, "class_names", path)
    if names.dtype.kind != "U" or names.ndim != 1 or len(names) == 0:
        raise DatasetCorruptError(
            f"{path}: class_names must be a 1-D array of strings (numpy.array(['cat', 'dog'])), got dtype "
            f"{names.dtype} and shape {names.shape}"
        )
    if top_label >= len(names):
        raise DatasetCorruptError(f"{path}: a label is {top_label}, but class_names names only {len(names)} classes")
    return tuple(str(s) for s in names)


def npz_layout(path: str | os.PathLike[str]) -> NpzLayout:
    """The layout of the archive at ``path``, checked (the inputs' values are checked when they are read)."""
    p = Path(path)
    with _archive(p) as f:
        shapes: dict[str, tuple[int, ...]] = {}
        sizes: dict[str, int] = {}
        top = 0
        for split in NPZ_SPLITS:
            if f"x_{split}" not in f.files:
                continue
            shape = _shape_of(f, f"x_{split}", p)
            shapes[split] = _sample_shape(shape, f"x_{split}", p)
            sizes[split] = shape[0]
            y = _labels(read_array(f, f"y_{split}", p), sizes[split], f"y_{split}", p)
            top = max(top, int(y.max()))
        if len(set(shapes.values())) > 1:
            raise DatasetCorruptError(f"{p}: the splits' samples differ in shape: {shapes}")
        return NpzLayout(shapes["train"], sizes, _class_names(f, top, p))


def read_npz_split(
    path: str | os.PathLike[str], split: str, layout: NpzLayout | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 in [0, 1] [N, C, H, W] or [N, F], y int64 [N])`` of one split of the archive at ``path``.
    ``layout``: the archive's ``npz_layout``, where the caller has it already (else it is read here: the whole
    archive's checks, so that a bad split is found before training, not after)."""
    p = Path(path)
    layout = layout or npz_layout(p)
    if split not in layout.split_sizes:
        have = ", ".join(layout.split_sizes)
        hint = " (hold out a validation set with data.val_size instead)" if split == "val" else ""
        raise ValueError(f"{p} has the splits {have}, not {split!r}{hint}")
    with _archive(p) as f:
        x = read_array(f, f"x_{split}", p)
        y = _labels(read_array(f, f"y_{split}", p), int(x.shape[0]), f"y_{split}", p)
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / np.float32(255)
    elif x.dtype == np.bool_:
        xf = x.astype(np.float32)
    elif x.dtype.kind == "f":
        xf = x.astype(np.float32)
        if not np.isfinite(xf).all() or xf.min() < 0 or xf.max() > 1:
            bad = float(xf[~(np.isfinite(xf) & (xf >= 0) & (xf <= 1))].flat[0])
            raise DatasetCorruptError(
                f"{p}: x_{split} holds {bad!r}; float inputs are intensities in [0, 1] (or give uint8 0..255)"
            )
    else:
        raise DatasetCorruptError(f"{p}: x_{split} has dtype {x.dtype}; give uint8 (0..255), bool, or floats in [0, 1]")
    xf = xf.reshape(len(xf), *layout.input_shape)
    return torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(y)


def pack_image_folders(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: tuple[int, int],
    *,
    color: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> NpzLayout:
    """Write the image folders ``<root>/{train,test}/<class>/*`` (and ``<root>/val/<class>/*`` where present)
    into the archive ``out``: uint8 images ``[N, H, W]`` (grayscale) or ``[N, 3, H, W]`` (``color``), resized
    bilinearly to ``size`` = (H, W) without keeping the aspect ratio, labels by class folder in sorted order,
    and the class names. Every split must have the same class folders. Written atomically; an existing
    ``out`` is refused unless ``overwrite``. Returns the archive's layout, as read back."""
    root, out_path = Path(root), Path(out)
    if not is_npz_name(out_path):
        raise ValueError(f"{out_path}: the archive's name must end in .npz (it is how relpsp recognises it)")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; pass overwrite (--overwrite) to replace it")
    splits = [s for s in NPZ_SPLITS if (root / s).is_dir()]
    if "train" not in splits or "test" not in splits:
        raise DatasetNotFoundError(f"{root} must hold train/ and test/, each with one folder of images per class")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    for split in splits:
        have = sorted(d.name for d in (root / split).iterdir() if d.is_dir())
        if have != classes:
            raise DatasetCorruptError(
                f"{root / split} has the class folders {have}, but {root / 'train'} has {classes}; every split "
                "needs the same ones"
            )
    if not classes:
        raise DatasetNotFoundError(f"{root / 'train'} holds no class folders")
    arrays: dict[str, np.ndarray] = {"class_names": np.array(classes)}
    for split in splits:
        images, labels = read_image_folder(root / split, classes, size, color=color)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
        if log is not None:
            log(f"{split}: {len(images)} images of {len(classes)} classes")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
    atomic_write_bytes(out_path, buffer.getvalue())
    return npz_layout(out_path)
