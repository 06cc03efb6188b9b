"""Build the two-class Face/Motorbike set from a user's own copy of Caltech-101.

Caltech-101 ships as ``101_ObjectCategories/<category>/image_NNNN.jpg`` with no train/test split. The
spiking-network papers that use its Faces and Motorbikes categories (Kheradpisheh et al. 2018, S4NN 2020)
train on 200 images per class and test on others; which images, each paper's code decides. This module
makes such a split reproducibly and writes it in the layout :mod:`relpsp.data.registry` reads
(``{train,test}/{face,motorbike}/`` plus ``SHA256SUMS``):

- the files of ``Faces`` and ``Motorbikes`` are taken in sorted name order, shuffled by
  ``numpy.random.default_rng(seed)`` (faces first, then motorbikes, one generator), and the first
  ``train_per_class`` of each class go to ``train/``, the next ``test_per_class`` to ``test/``;
- each file's bytes are copied unchanged under its own name (the loader converts to grayscale and
  resizes when it reads), after checking that the image decodes;
- ``SPLIT.json`` records the source folder, the seed, the counts and which source file each copy is.

The split is not the one of the project's shared copy (made by a public re-implementation of
Kheradpisheh et al.), so accuracies on the two are not directly comparable. The whole folder is built
beside ``dest`` and renamed into place at the end: an interrupted run leaves nothing half-written, and an
existing ``dest`` is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from relpsp.data._files import DatasetNotFoundError, sha256_bytes
from relpsp.data.images import decode_image, image_files
from relpsp.data.registry import CALTECH_CLASSES

__all__ = ["CALTECH101_CATEGORIES", "find_caltech101_categories", "prepare_caltech"]

#: Caltech-101's category folder for each of our classes, in label order
CALTECH101_CATEGORIES = {"face": "Faces", "motorbike": "Motorbikes"}


def find_caltech101_categories(source: str | os.PathLike[str]) -> Path:
    """The folder that holds ``Faces`` and ``Motorbikes``: ``source`` itself or its ``101_ObjectCategories``."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DatasetNotFoundError(f"{source} is not a folder")
    for cand in (source, source / "101_ObjectCategories"):
        if all((cand / name).is_dir() for name in CALTECH101_CATEGORIES.values()):
            return cand
    names = " and ".join(CALTECH101_CATEGORIES.values())
    raise DatasetNotFoundError(
        f"{source} holds neither {names} nor 101_ObjectCategories/{{{','.join(CALTECH101_CATEGORIES.values())}}}; "
        "point it at the extracted Caltech-101 folder"
    )


def _whole_number(name: str, value: int, minimum: int) -> int:
    """``value`` as an int, refused unless it is a whole number (not a bool) of at least ``minimum`` (0 or 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} whole number, got {value!r}")
    return int(value)


def prepare_caltech(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    seed: int = 0,
    train_per_class: int = 200,
    test_per_class: int = 198,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the Face/Motorbike split of the Caltech-101 copy at ``source`` into ``dest`` (see the module
    docstring) and return ``dest``. ``dest`` must not exist yet. Errors name the folder or file at fault and
    leave nothing behind."""
    train_n = _whole_number("train_per_class", train_per_class, 1)
    test_n = _whole_number("test_per_class", test_per_class, 1)
    seed = _whole_number("seed", seed, 0)
    say = log or (lambda _msg: None)
    categories = find_caltech101_categories(source).resolve()
    dest = Path(dest).expanduser()
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists; remove it or choose another folder (nothing was written)")

    rng = np.random.default_rng(seed)
    plan: list[tuple[str, str, Path]] = []  # (split, class, source file)
    for cls in CALTECH_CLASSES:
        files = image_files(categories / CALTECH101_CATEGORIES[cls])
        if len(files) < train_n + test_n:
            raise DatasetNotFoundError(
                f"{categories / CALTECH101_CATEGORIES[cls]} has {len(files)} image(s); {train_n} + {test_n} are needed"
            )
        order = rng.permutation(len(files))
        plan += [("train", cls, files[i]) for i in order[:train_n]]
        plan += [("test", cls, files[i]) for i in order[train_n : train_n + test_n]]

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sums: list[str] = []
        picked: dict[str, str] = {}
        for split in ("train", "test"):
            for cls in CALTECH_CLASSES:
                (tmp / split / cls).mkdir(parents=True)
        for split, cls, path in plan:
            data = path.read_bytes()
            decode_image(data, (8, 8), str(path))  # a file the loader could not read fails here, by name
            rel = f"{split}/{cls}/{path.name}"
            (tmp / rel).write_bytes(data)
            sums.append(f"{sha256_bytes(data)}  ./{rel}")
            picked[rel] = f"{CALTECH101_CATEGORIES[cls]}/{path.name}"
        (tmp / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        meta = {
            "source": str(categories),
            "seed": seed,
            "train_per_class": train_n,
            "test_per_class": test_n,
            "rule": "per class: files sorted by name, shuffled by numpy.random.default_rng(seed) "
            "(face, then motorbike); the first train_per_class to train, the next test_per_class to test",
            "files": picked,
        }
        (tmp / "SPLIT.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.rename(tmp, dest)  # fails if a non-empty dest appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {len(plan)} images ({train_n} + {test_n} per class, seed {seed}) from {categories} to {dest}")
    return dest
