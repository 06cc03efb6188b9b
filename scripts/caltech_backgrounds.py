"""How dark or cluttered the background of Caltech Face/Motorbike images is, measured by the mean grey level
of a 5-pixel border (255 = white). Prints, per split, how many motorbikes have a border mean below
``--threshold`` and the median, then the file and border mean of the given test indices (the loader's
order: each class's files sorted by name, faces first, so test index i >= 198 is the (i - 198)-th
motorbike). Used for the per-class reading of the faithful Caltech row in docs/RESULTS.md:

    python scripts/caltech_backgrounds.py --indices 218 240 277 284 335 340
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from relpsp.data.images import image_files
from relpsp.data.registry import CALTECH_CLASSES, dataset_dir


def border_mean(path: Path, border: int) -> float:
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    edge = np.concatenate([a[:border].ravel(), a[-border:].ravel(), a[:, :border].ravel(), a[:, -border:].ravel()])
    return float(edge.mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root",
        default=None,
        help="the dataset folder (default: the one training reads, <data dir>/caltech-face-motorbike)",
    )
    ap.add_argument("--indices", type=int, nargs="*", default=[], help="test indices to describe")
    ap.add_argument("--border", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=200.0)
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else dataset_dir("caltech-face-motorbike")
    for split in ("train", "test"):
        means = np.array([border_mean(p, args.border) for p in image_files(root / split / "motorbike")])
        below = int((means < args.threshold).sum())
        print(
            f"{split}: {below} of {len(means)} motorbikes with border mean < {args.threshold:g}; median {np.median(means):.1f}"
        )
    test = [p for cls in CALTECH_CLASSES for p in image_files(root / "test" / cls)]  # the loader's order
    for i in args.indices:
        if not 0 <= i < len(test):
            ap.error(f"test index {i} is outside 0..{len(test) - 1}")
        print(
            f"test index {i}: {test[i].parent.name}/{test[i].name}, border mean {border_mean(test[i], args.border):.0f}"
        )


if __name__ == "__main__":
    main()
