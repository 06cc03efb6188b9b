"""``relpsp export CKPT --format nir OUT``: write a checkpoint as a NIR graph (see ``relpsp.export.nir``:
each layer as Linear/Conv2d -> I -> IF, with the single-spike rule, theta and the cut-off t_max in the
node metadata; min-time pooling as SumPool2d -> IF; the dataset and its preprocessing on the Input node).
``relpsp simulate OUT`` runs the file again. OUT may not be CKPT itself."""

from __future__ import annotations

import argparse

__all__ = ["FORMATS", "configure", "run"]

FORMATS = ("nir",)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a relpsp checkpoint, or its run folder")
    parser.add_argument("--format", choices=FORMATS, default="nir", help="output format (default: nir)")
    parser.add_argument("out", metavar="OUT", help="output file")


def run(args: argparse.Namespace) -> int:
    from relpsp.commands import checkpoint_of
    from relpsp.export.nir import export_nir

    if args.format != "nir":  # pragma: no cover - argparse already restricts the choices
        raise ValueError(f"unknown export format {args.format!r}; known: {FORMATS}")
    net = export_nir(checkpoint_of(args.checkpoint), args.out)  # with the checkpoint's data settings (relpsp.data)
    print(f"wrote {args.out} (NIR, {len(net.layers)} layers, arch {net.arch!r})")
    return 0
