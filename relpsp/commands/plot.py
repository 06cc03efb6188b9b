"""``relpsp plot RUN_DIR``: training curves, output spike-time histogram and a spike raster (PNG files)."""

from __future__ import annotations

import argparse

__all__ = ["configure", "run"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="folder written by relpsp train (metrics.jsonl, checkpoint.ckpt)")
    p.add_argument("--sample", type=int, default=0, help="test sample for the raster")
    p.add_argument("--data-dir")


def run(args: argparse.Namespace) -> int:
    from relpsp.plots import plot_run

    for path in plot_run(args.run_dir, sample=args.sample, data_dir=args.data_dir):
        print(path)
    return 0
