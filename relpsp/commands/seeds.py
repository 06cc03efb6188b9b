"""``relpsp train CONFIG --seeds 0-2 [--jobs 2]``: one experiment trained with several seeds, each into
its own run folder ``PREFIX-seed<S>``, then summarised as ``relpsp summary`` summarises them (mean ± sample
standard deviation of the test accuracy, the decisions right).

With ``--jobs 1`` (the default) the seeds train one after another in this process, as ``relpsp train
--seed S`` would, progress bars included. With ``--jobs N`` up to N train at once, each in its own
process (``python -m relpsp.cli train FILE.toml``, FILE being the resolved experiment with that seed),
printing into ``PREFIX-seed<S>.log`` beside its folder; when the experiment leaves ``train.threads`` at 0
(all cores), each process gets ``cores // N`` so that they do not fight over the cores. A seed that fails
does not stop the others; the command then exits non-zero and names it. Every folder is checked before any
seed starts, so a folder that holds a run (without ``--resume`` or ``--overwrite``) refuses the whole
command and nothing is lost."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relpsp.config import Config

__all__ = ["MAX_SEEDS", "check_folders", "job_threads", "parse_seeds", "seed_folder", "train_seeds"]

#: the most seeds one command trains (a typo such as 0-1000000 is refused, not started)
MAX_SEEDS = 1000


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-5"`` or a mix (``"0-2,7"``) as a list of distinct seeds >= 0, in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"--seeds expects seeds >= 0 as a list and ranges, e.g. 0,1,2 or 0-5; got {text!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ValueError(f"--seeds: the range {part.strip()!r} runs backwards")
        if hi - lo + 1 + len(seeds) > MAX_SEEDS:
            raise ValueError(f"--seeds names more than {MAX_SEEDS} seeds ({text!r})")
        seeds.extend(range(lo, hi + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds names seed {', '.join(map(str, repeated))} more than once")
    return seeds


def seed_folder(prefix: Path, seed: int) -> Path:
    """The run folder of one seed: ``PREFIX-seed<S>`` (the name ``relpsp summary`` groups by)."""
    if prefix.name in ("", ".", ".."):
        raise ValueError(
            f"with --seeds, --out is the prefix of the folders (runs/exp for runs/exp-seed0), not {prefix}"
        )
    return prefix.with_name(f"{prefix.name}-seed{seed}")


def job_threads(threads: int, jobs: int) -> int:
    """Threads of each of ``jobs`` processes: the experiment's own count, or with 0 (all cores) a share."""
    if threads or jobs == 1:
        return threads
    return max(1, (os.cpu_count() or 1) // jobs)


def _log_path(out: Path) -> Path:
    """The log of a seed trained in its own process: ``PREFIX-seed<S>.log`` beside its folder."""
    return out.with_name(out.name + ".log")


def check_folders(folders: list[Path], resume: bool, overwrite: bool) -> None:
    """Refuse, before any seed starts, a folder that holds a run which would be neither continued nor
    replaced (``fit`` checks each folder again when it starts)."""
    from relpsp.train.checkpointing import CHECKPOINT_NAME
    from relpsp.train.run_folder import RUN_FILES

    if overwrite:
        return
    held = []
    for f in folders:
        left = [n for n in RUN_FILES if (f / n).exists()]
        if left and not (resume and (f / CHECKPOINT_NAME).exists()):
            held.append(f"{f} ({', '.join(left)})")
    if held:
        why = "has no checkpoint to resume from" if resume else "already holds a run"
        raise ValueError(
            f"{'; '.join(held)}: {'each' if len(held) > 1 else 'it'} {why}; "
            + ("" if resume else "pass --resume to continue, ")
            + "--overwrite to start again, or choose another --out"
        )


def _summary(folders: list[Path]) -> str:
    from relpsp.summary import format_summary, group_runs, read_run, summarize

    runs = [read_run(f) for f in folders if (f / "results.json").is_file()]
    return "\n\n".join(format_summary(summarize(g)) for g in group_runs(runs)) if runs else ""


def _test_accuracy(out: Path) -> str:
    """The finished run's test accuracy as ``relpsp train`` prints it, or why it cannot be read."""
    import json

    try:
        return f"{100 * float(json.loads((out / 'results.json').read_text(encoding='utf-8'))['test_accuracy']):.2f}%"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unknown ({out / 'results.json'}: {e})"


def _in_process(cfg: Config, plan: list[tuple[int, Path]], resume: bool, overwrite: bool, progress: bool) -> list:
    from relpsp.train import fit

    failed = []
    for seed, out in plan:
        print(f"seed {seed} -> {out}", flush=True)
        try:
            res = fit(
                dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed)),
                out,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
            )
        except (ValueError, RuntimeError, OSError) as e:
            print(f"seed {seed}: failed: {e}", file=sys.stderr, flush=True)
            failed.append(seed)
            continue
        print(f"seed {seed}: test accuracy {100 * res['test_accuracy']:.2f}%, {res['wall_time_s']:.0f} s", flush=True)
    return failed


def _in_processes(cfg: Config, plan: list[tuple[int, Path]], jobs: int, resume: bool, overwrite: bool) -> list:
    from relpsp.config import config_to_toml

    threads = job_threads(cfg.train.threads, jobs)
    failed = []
    waiting = list(plan)
    running: dict[subprocess.Popen, tuple[int, Path, float]] = {}
    with tempfile.TemporaryDirectory(prefix="relpsp-seeds-") as tmp:
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    seed, out = waiting.pop(0)
                    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed, threads=threads))
                    toml = Path(tmp) / f"seed{seed}.toml"
                    toml.write_text(config_to_toml(one, comments=False), encoding="utf-8")
                    cmd = [sys.executable, "-m", "relpsp.cli", "train", str(toml), "--out", str(out), "--no-progress"]
                    cmd += ["--resume"] if resume else ["--overwrite"] if overwrite else []
                    log = _log_path(out)
                    log.parent.mkdir(parents=True, exist_ok=True)
                    with open(log, "w", encoding="utf-8") as f:
                        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
                    running[proc] = (seed, out, time.monotonic())
                    print(
                        f"seed {seed} -> {out} ({threads} thread{'s' if threads != 1 else ''}; log {log})", flush=True
                    )
                for proc in [p for p in running if p.poll() is not None]:
                    seed, out, t0 = running.pop(proc)
                    minutes = (time.monotonic() - t0) / 60
                    if proc.returncode == 0:
                        acc = _test_accuracy(out)
                        print(f"seed {seed}: test accuracy {acc}, {minutes:.1f} min", flush=True)
                    else:
                        log = _log_path(out)
                        print(f"seed {seed}: failed (exit {proc.returncode}); see {log}", file=sys.stderr, flush=True)
                        failed.append(seed)
                time.sleep(0.2)
        finally:  # interrupted: stop the seeds still training (each keeps its last checkpoint)
            for proc in running:
                proc.terminate()
            for proc in running:
                proc.wait()
    return failed


def train_seeds(
    cfg: Config,
    prefix: Path,
    seeds: list[int],
    *,
    jobs: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Train ``cfg`` once per seed into ``PREFIX-seed<S>``, ``jobs`` at a time; print each seed's outcome
    and the summary of the finished runs; return 0, or 1 when a seed failed."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    jobs = min(jobs, len(seeds))
    plan = [(s, seed_folder(prefix, s)) for s in seeds]
    check_folders([out for _, out in plan], resume, overwrite)
    epochs = f"{cfg.train.epochs} epoch" + ("s" if cfg.train.epochs != 1 else "")
    at_once = f", {jobs} at once" if jobs > 1 else ""
    print(
        f"relpsp train: {cfg.data.dataset} {cfg.model.arch}, {epochs}, seeds {', '.join(map(str, seeds))}"
        f"{at_once} -> {prefix}-seed<S>",
        flush=True,
    )
    if jobs == 1:
        failed = _in_process(cfg, plan, resume, overwrite, progress)
    else:
        failed = _in_processes(cfg, plan, jobs, resume, overwrite)
    text = _summary([out for _, out in plan])
    if text:
        print(text)
    if failed:
        print(f"relpsp train: seed {', '.join(map(str, failed))} failed", file=sys.stderr)
        return 1
    return 0
