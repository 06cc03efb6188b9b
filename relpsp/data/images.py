"""Image folders: ``<root>/<class>/*.jpg`` -> grayscale intensities, resized to a fixed size (``relpsp data
pack`` also reads them in colour, into an ``.npz`` archive: ``relpsp.data.npz.pack_image_folders``).

Used for Caltech-101 Face/Motorbike (layout ``<root>/{train,test}/{face,motorbike}/``, a ``SHA256SUMS``
file at ``<root>``). Pillow is imported on first use.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relpsp.data._files import DatasetCorruptError, DatasetNotFoundError, sha256_bytes

__all__ = ["IMAGE_SUFFIXES", "decode_image", "image_files", "load_image_folder", "read_image_folder", "read_sha256sums"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")


def read_sha256sums(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a ``sha256sum`` listing -> {relative path with '/' separators: hex digest}."""
    path = Path(path)
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name.lstrip(" *")
        if not sep or len(digest) != 64 or not name:
            raise DatasetCorruptError(f"{path}:{n}: not a sha256sum line: {line!r}")
        sums[name.removeprefix("./")] = digest.lower()
    return sums


def decode_image(data: bytes, size: tuple[int, int], name: str, color: bool = False) -> np.ndarray:
    """uint8 ``[H, W]`` grayscale, or ``[3, H, W]`` RGB with ``color`` (a grayscale image gives three equal
    channels), resized bilinearly to ``size`` = (H, W)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading image folders needs Pillow: pip install pillow (or relpsp[cli])") from e
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = "RGB" if color else "L"
            if im.format == "JPEG":
                im.draft(mode, (width, height))  # let libjpeg downscale by 1/2..1/8 while decoding
            if im.mode == "I" or im.mode.startswith("I;16"):
                out = _sixteen_bit_to_l(im, name).convert(mode)
            elif im.mode == "F":
                raise DatasetCorruptError(f"{name}: floating-point images (mode F) are not supported")
            else:
                out = im.convert(mode)
            out = out.resize((width, height), Image.Resampling.BILINEAR)
            a = np.asarray(out, dtype=np.uint8)
            return np.ascontiguousarray(a.transpose(2, 0, 1)) if color else a
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetCorruptError(f"{name}: cannot decode image ({e})") from None


def _sixteen_bit_to_l(im: Any, name: str) -> Any:
    """A 16-bit grayscale image (PNG/PGM, Pillow mode ``I`` or ``I;16*``) as 8-bit ``L``, scaled by
    255/65535 (Pillow's own ``convert("L")`` clips at 255 instead, turning 25% grey into white)."""
    from PIL import Image

    a = np.asarray(im, dtype=np.float64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DatasetCorruptError(f"{name}: integer image values outside 0..65535 are not supported")
    return Image.fromarray(np.rint(a * (255.0 / 65535.0)).astype(np.uint8))


def image_files(folder: Path) -> list[Path]:
    """The image files of one class folder in the order ``load_image_folder`` reads them (sorted by name)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str],
    size: tuple[int, int] = (64, 64),
    checksums: Mapping[str, str] | None = None,
    checksum_prefix: str = "",
    fix: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``<root>/<classes[k]>/*`` as label k -> (x ``[N, 1, H, W]`` float32 in [0, 1], y ``[N]`` int64).

    ``size`` is (H, W); images are converted to grayscale and resized (bilinear, aspect not kept). Files are
    read in sorted order per class. With ``checksums`` ({path relative to the checksum file: sha256}),
    every image read must be listed and match, and every listed file under ``checksum_prefix`` must exist.
    """
    images, labels = read_image_folder(root, classes, size, checksums, checksum_prefix, fix)
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze_(1)
    return x, torch.from_numpy(labels)


def read_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str],
    size: tuple[int, int] = (64, 64),
    checksums: Mapping[str, str] | None = None,
    checksum_prefix: str = "",
    fix: str = "",
    *,
    color: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``load_image_folder``'s reading, before the scaling: (uint8 images ``[N, H, W]``, or ``[N, 3, H, W]``
    RGB with ``color``; int64 labels ``[N]``)."""
    root = Path(root)
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be two positive ints (H, W), got {size}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    seen: set[str] = set()
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            raise DatasetNotFoundError(f"missing image folder {folder}{'; ' + fix if fix else ''}")
        for p in image_files(folder):
            data = p.read_bytes()
            if checksums is not None:
                rel = f"{checksum_prefix}{cls}/{p.name}"
                want = checksums.get(rel)
                if want is None:
                    raise DatasetCorruptError(f"{p}: not listed in SHA256SUMS{'; ' + fix if fix else ''}")
                if sha256_bytes(data) != want:
                    raise DatasetCorruptError(f"{p}: sha256 mismatch{'; ' + fix if fix else ''}")
                seen.add(rel)
            images.append(decode_image(data, (height, width), str(p), color=color))
            labels.append(label)
    if checksums is not None:
        prefixes = tuple(f"{checksum_prefix}{cls}/" for cls in classes)
        # only images are read: a listed file of another kind (notes.txt) is not missing
        missing = sorted(
            k
            for k in checksums
            if k.startswith(prefixes) and k not in seen and Path(k).suffix.lower() in IMAGE_SUFFIXES
        )
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} listed image(s) missing under {root}, e.g. {missing[0]}{'; ' + fix if fix else ''}"
            )
    if not images:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return np.stack(images), np.array(labels, dtype=np.int64)
