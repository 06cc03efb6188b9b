"""``relpsp summary RUN_DIR ...``: test accuracy over seeds (mean ± sample standard deviation), the test
decisions right in all and, with ``--target``, whether the mean reaches it and how many decisions that
needs; runs of different settings are reported apart, and stopped runs are listed but not averaged (see
``relpsp.summary``). A folder that is not itself a run folder stands for the run folders directly inside
it (``relpsp summary runs/p41`` for ``runs/p41/seed0`` ...)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["configure", "run", "run_folders"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by relpsp train, or folders of them"
    )
    p.add_argument("--target", metavar="PERCENT", help="test accuracy to judge the mean against, e.g. 99.4")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_folders(paths: list[str], starting: list[Path] | None = None) -> list[Path]:
    """The run folders named, a folder of run folders standing for those inside it (sorted). Folders that
    a run is training into but that hold no run file yet (its first epoch, before any checkpoint) are
    added to ``starting`` when it is given, not returned: they hold no settings to group them by."""
    from relpsp.train.run_folder import RUN_FILES, is_training

    def kind(p: Path) -> str | None:  # "run", "starting" (training, nothing written yet) or neither
        if any((p / m).is_file() for m in RUN_FILES):
            return "run"
        return "starting" if is_training(p) else None

    found: list[Path] = []
    new: list[Path] = []
    for name in paths:
        p = Path(name)
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a folder")
        own = kind(p)
        inner = [(p, own)] if own else [(c, kind(c)) for c in sorted(p.iterdir()) if c.is_dir()]
        inner = [(c, k) for c, k in inner if k]
        if not inner:
            raise ValueError(f"{p} is neither a run folder nor a folder of run folders (no {', '.join(RUN_FILES)})")
        for c, k in inner:
            (found if k == "run" else new).append(c)
    if starting is not None:
        starting.extend(dict.fromkeys(new))
    return list(dict.fromkeys(found))


def run(args: argparse.Namespace) -> int:
    from relpsp.summary import format_summary, group_runs, read_run, summarize

    target = None
    if args.target is not None:
        try:
            value = float(args.target)
        except ValueError:
            raise ValueError(f"--target must be a percentage such as 99.4, got {args.target!r}") from None
        if not 0 < value <= 100:
            raise ValueError(f"--target must be in (0, 100], got {args.target}")
        target = args.target
    starting: list[Path] = []
    groups = group_runs([read_run(p) for p in run_folders(args.run_dirs, starting)])
    summaries = [summarize(g, target) for g in groups]
    note = [f"{p}: training, in its first epoch (no settings or numbers written yet)" for p in starting]
    if args.json:
        print(json.dumps(summaries, indent=2))
        if note:
            print("\n".join(note), file=sys.stderr)
    else:
        print("\n\n".join([*(format_summary(s) for s in summaries), *(["\n".join(note)] if note else [])]))
    return 0
