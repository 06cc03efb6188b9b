"""``relpsp plot RUN_DIR``: training curves, output spike-time histogram and a spike raster (PNG files)."""

from __future__ import annotations

import argparse

__all__ = ["configure", "run"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="folder written by relpsp train (metrics.jsonl, checkpoint.ckpt)")
    p.add_argument("--sample", type=int, default=0, help="test sample for the raster")
    p.add_argument(
        "--data-dir",
        help=(
            "dataset folder for the test images of output_times.png and raster.png (default: the run's, else"
            " $RELPSP_DATA or ~/.cache/relpsp)"
        ),
    )
    p.add_argument("--out", help="folder for the PNG files (default: RUN_DIR)")


def run(args: argparse.Namespace) -> int:
    from relpsp.plots import plot_run

    paths = plot_run(args.run_dir, sample=args.sample, data_dir=args.data_dir, out_dir=args.out)
    for path in paths:
        print(path)
    if len(paths) == 1:
        print(f"note: {args.run_dir} holds no checkpoint, so only the training curves were drawn")
    return 0
