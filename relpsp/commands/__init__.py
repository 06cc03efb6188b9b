"""One module per ``relpsp`` command: ``configure(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: the checkpoint's name in a run folder: relpsp.train.CHECKPOINT_NAME, kept literal so that the commands that
#: only read checkpoints need not import the trainer (a test checks that the two agree)
RUN_CHECKPOINT = "checkpoint.ckpt"


def checkpoint_of(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or the checkpoint inside it when it is a run folder (what ``relpsp train --out`` made)."""
    p = Path(path)
    if p.is_dir():
        if (p / RUN_CHECKPOINT).is_file():
            return p / RUN_CHECKPOINT
        raise FileNotFoundError(f"{p} is a folder, not a file, and holds no {RUN_CHECKPOINT} (a run's checkpoint)")
    return p


def add_threads_argument(parser: argparse.ArgumentParser, default: int | None) -> None:
    """``--threads N``: CPU threads for the compiled kernels and torch (0: all cores); ``default`` None
    leaves the libraries' own choice unless the option is given."""
    if default is None:
        what = "default: the libraries' own choice, all cores"
    else:
        what = "default: all cores" if default == 0 else f"default {default}"
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help=f"CPU threads for the compiled kernels and torch, e.g. 1 beside a training run (0: all cores; {what})",
    )


def check_threads(threads: int | None) -> int | None:
    """``--threads`` checked at the command's boundary, before anything is read (None: not given)."""
    if threads is None:
        return None
    from relpsp._validate import check_int_at_least

    return check_int_at_least("--threads", threads, 0)


def use_threads(threads: int | None, *, torch_heavy: bool = False) -> None:
    """Apply a checked ``--threads`` as training does (``relpsp.train.set_threads``); None changes nothing."""
    if threads is not None:
        from relpsp.train import set_threads

        set_threads(threads, torch_heavy=torch_heavy)
