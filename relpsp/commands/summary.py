"""``relpsp summary RUN_DIR ...``: test accuracy over seeds (mean ± sample standard deviation), the test
decisions right in all and, with ``--target``, whether the mean reaches it and how many decisions that
needs; runs of different settings are reported apart, and stopped runs are listed but not averaged (see
``relpsp.summary``). A folder that is not itself a run folder stands for the run folders directly inside
it (``relpsp summary runs/p41`` for ``runs/p41/seed0`` ...)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["configure", "run", "run_folders"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by relpsp train, or folders of them"
    )
    p.add_argument("--target", metavar="PERCENT", help="test accuracy to judge the mean against, e.g. 99.4")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_folders(paths: list[str]) -> list[Path]:
    """The run folders named, a folder of run folders standing for those inside it (sorted)."""
    from relpsp.train.run_folder import RUN_FILES

    found: list[Path] = []
    for name in paths:
        p = Path(name)
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a folder")
        if any((p / m).is_file() for m in RUN_FILES):
            found.append(p)
            continue
        inner = sorted(c for c in p.iterdir() if c.is_dir() and any((c / m).is_file() for m in RUN_FILES))
        if not inner:
            raise ValueError(f"{p} is neither a run folder nor a folder of run folders (no {', '.join(RUN_FILES)})")
        found.extend(inner)
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
    groups = group_runs([read_run(p) for p in run_folders(args.run_dirs)])
    summaries = [summarize(g, target) for g in groups]
    if args.json:
        print(json.dumps(summaries, indent=2))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    return 0
