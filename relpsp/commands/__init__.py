"""One module per ``relpsp`` command: ``configure(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

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
