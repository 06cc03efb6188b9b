"""Summaries over seeds of the run folders that ``relpsp train`` writes (``relpsp summary``).

A run folder is *finished* when it holds ``results.json`` and no more epochs in ``metrics.jsonl`` than
that file reports; otherwise it is *stopped* after the last epoch of ``metrics.jsonl`` (its settings then
come from its checkpoint). Runs are grouped by their resolved config with the seed and the settings a
resume may change (device, backend, threads, data folder, evaluation batch, checkpoint interval) set
aside, so that runs of different experiments are never averaged together; the number of epochs counts.

For a group of n finished runs with test accuracies a_i: the mean, the sample standard deviation
(n - 1 in the denominator; 0 for one run) and the test decisions right in all, sum_i a_i N_i over test
sets of N_i samples. Given a target p in percent, the mean reaches it when that sum is at least
ceil(p / 100 * sum_i N_i), computed in exact fractions (so 98.497 is not rounded up to 98.5). A stopped
run (or one training now) is listed with its last epoch but never enters the mean. Runs trained with a
validation split (``data.val_size``, a probe) also report its accuracy and, for a split of n_v held-out
samples, the validation decisions right in all (sum_i v_i n_v), the number a probe chooses by.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from relpsp.config import Config, config_from_dict, config_to_dict
from relpsp.train.checkpointing import CHECKPOINT_NAME, config_changes, resume_key
from relpsp.train.run_folder import is_training, read_metrics

__all__ = ["Group", "Run", "format_summary", "group_runs", "read_run", "summarize", "target_reached"]


@dataclass(frozen=True)
class Run:
    """One run folder: its settings, seed, and where it stands."""

    path: Path
    config: Config
    finished: bool
    epochs_done: int
    #: the final test accuracy (a fraction) if finished, else the last epoch's (None before any epoch)
    test_accuracy: float | None
    #: the number of test samples (None where neither the run nor the dataset's registry says it)
    test_samples: int | None
    wall_time_s: float | None
    #: a process is training into the folder now (it holds the run lock)
    training: bool = False
    #: the validation accuracy (a fraction) of a run trained with a validation split (``data.val_size``),
    #: final if finished, else the last epoch's; None without a split
    val_accuracy: float | None = None

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def test_right(self) -> int | None:
        """Test decisions right, if the accuracy and the test size give a whole number of them."""
        return _whole_count(self.test_accuracy, self.test_samples)

    @property
    def val_right(self) -> int | None:
        """Validation decisions right, for a run that held out ``data.val_size`` training samples and whose
        accuracy gives a whole number of them (None for a dataset's own split, whose size is not its to know)."""
        return _whole_count(self.val_accuracy, self.config.data.val_size or None)


def _whole_count(accuracy: float | None, samples: int | None) -> int | None:
    """``accuracy * samples`` as the whole number of decisions it stands for, or None where either is
    unknown or the product is not within float rounding of a whole number."""
    if accuracy is None or samples is None:
        return None
    right = accuracy * samples
    return round(right) if abs(right - round(right)) < 1e-6 * max(samples, 1) else None


@dataclass(frozen=True)
class Group:
    """Runs of one experiment: the same settings but for the seed (and what a resume may change)."""

    label: str
    runs: tuple[Run, ...]

    @property
    def finished(self) -> tuple[Run, ...]:
        return tuple(sorted((r for r in self.runs if r.finished), key=lambda r: r.seed))

    @property
    def stopped(self) -> tuple[Run, ...]:
        return tuple(sorted((r for r in self.runs if not r.finished), key=lambda r: r.seed))


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a JSON file written by `relpsp train` ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _registry_test_size(cfg: Config) -> int | None:
    from relpsp.data import dataset_info

    try:
        return int(dataset_info(cfg.data.dataset).split_sizes["test"])
    except (KeyError, ValueError):
        return None


def _results_config(results: dict[str, Any], path: Path) -> Config:
    if not isinstance(results.get("config"), dict):
        raise ValueError(f"{path}: no 'config' object")
    return config_from_dict(results["config"])


def _number(obj: dict[str, Any], key: str, path: Path) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{path}: {key!r} is missing or not a finite number")
    return float(v)


def _continued(run: Path, ckpt_path: Path, reported: int) -> bool:
    """Whether a finished run's folder is being trained further or was, and stopped before its next epoch
    ended (its checkpoint was written for more epochs than results.json reports)."""
    if is_training(run):
        return True
    if not ckpt_path.is_file():
        return False
    from relpsp.checkpoint import read_checkpoint_meta

    epochs = (read_checkpoint_meta(ckpt_path).get("config") or {}).get("train", {}).get("epochs")
    return isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > reported


def read_run(path: str | os.PathLike) -> Run:
    """Read a run folder; ``ValueError`` names what is missing or malformed. Nothing is executed or
    unpickled: the files are JSON and the checkpoint's own checked format."""
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a folder")
    results_path, metrics_path, ckpt_path = run / "results.json", run / "metrics.jsonl", run / CHECKPOINT_NAME
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    results = _read_json_object(results_path) if results_path.is_file() else None
    if results is not None:
        reported = int(_number(results, "epochs", results_path))
        if (not rows or int(rows[-1]["epoch"]) <= reported) and not _continued(run, ckpt_path, reported):
            cfg = _results_config(results, results_path)
            size = results.get("test_samples")
            return Run(
                path=run,
                config=cfg,
                finished=True,
                epochs_done=len(rows) if rows else reported,
                test_accuracy=_number(results, "test_accuracy", results_path),
                test_samples=size if isinstance(size, int) and size > 0 else _registry_test_size(cfg),
                wall_time_s=_number(results, "wall_time_s", results_path) if "wall_time_s" in results else None,
                val_accuracy=_fraction_or_none(results.get("val_accuracy")),
            )
    if ckpt_path.is_file():
        from relpsp.checkpoint import read_checkpoint_meta

        meta = read_checkpoint_meta(ckpt_path)
        if not isinstance(meta.get("config"), dict):
            raise ValueError(f"{ckpt_path} holds no training config")
        cfg = config_from_dict(meta["config"])
    elif results is not None:
        cfg = _results_config(results, results_path)
    else:
        raise ValueError(f"{run} holds neither results.json nor {CHECKPOINT_NAME}: is it a `relpsp train` run folder?")
    accuracy = _fraction_or_none(rows[-1].get("test_accuracy")) if rows else None
    return Run(
        path=run,
        config=cfg,
        finished=False,
        epochs_done=int(rows[-1]["epoch"]) if rows else 0,
        test_accuracy=accuracy,
        test_samples=_registry_test_size(cfg),
        wall_time_s=None,
        training=is_training(run),
        val_accuracy=_fraction_or_none(rows[-1].get("val_accuracy")) if rows else None,
    )


def _fraction_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _experiment(cfg: Config) -> Config:
    """``cfg`` without its seed and the settings a resume may change, the number of epochs kept."""
    key = resume_key(cfg)
    return dataclasses.replace(key, train=dataclasses.replace(key.train, seed=0, epochs=cfg.train.epochs))


def _base_label(path: Path) -> str:
    """The run folder's path without its seed: ``runs/p41/seed0`` -> ``runs/p41``, ``x/cnn-seed2`` -> ``x/cnn``."""
    stem = re.sub(r"[-_.]?seed\d+$", "", path.name)
    return str(path.parent / stem) if stem else str(path.parent)


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of runs of one experiment, in the order their first run was given. A group is labelled by
    its first run's folder without the seed; where labels repeat, each later one adds what differs from
    the first group of that label."""
    keyed: dict[str, list[Run]] = {}
    experiments: dict[str, Config] = {}
    for r in runs:
        exp = _experiment(r.config)
        key = json.dumps(config_to_dict(exp), sort_keys=True)
        keyed.setdefault(key, []).append(r)
        experiments.setdefault(key, exp)
    first_of_label: dict[str, Config] = {}
    groups = []
    for key, members in keyed.items():
        exp = experiments[key]
        label = _base_label(members[0].path)
        if label in first_of_label:
            label = f"{label} ({config_changes(first_of_label[label], exp)})"
        else:
            first_of_label[label] = exp
        groups.append(Group(label, tuple(members)))
    return groups


def _decisions(rights: list[int | None], sizes: list[int | None]) -> tuple[int | None, int | None]:
    """Decisions right over runs and their number, or (None, None) unless every run has whole counts."""
    if not rights or any(v is None for v in (*rights, *sizes)):
        return None, None
    return sum(v or 0 for v in rights), sum(n or 0 for n in sizes)


def target_reached(right: int, total: int, target_percent: str | float) -> tuple[bool, int]:
    """Whether ``right`` of ``total`` decisions reach ``target_percent``, and how many that needs (exact)."""
    needed = math.ceil(Fraction(str(target_percent)) * total / 100)
    return right >= needed, needed


def summarize(group: Group, target_percent: str | float | None = None) -> dict[str, Any]:
    """The numbers of one group (see the module docstring), as a JSON-ready dict."""
    done = group.finished
    acc = [100 * (r.test_accuracy or 0.0) for r in done]  # a finished run always has its accuracy
    first = group.runs[0].config
    out: dict[str, Any] = {
        "label": group.label,
        "dataset": first.data.dataset,
        "arch": first.model.arch,
        "epochs": first.train.epochs,
        "finished": [
            {
                "seed": r.seed,
                "path": str(r.path),
                "test_accuracy_percent": a,
                "val_accuracy_percent": None if r.val_accuracy is None else 100 * r.val_accuracy,
            }
            for r, a in zip(done, acc, strict=True)
        ],
        "stopped": [
            {
                "seed": r.seed,
                "path": str(r.path),
                "epochs_done": r.epochs_done,
                "training": r.training,
                "last_test_accuracy_percent": None if r.test_accuracy is None else 100 * r.test_accuracy,
                "last_val_accuracy_percent": None if r.val_accuracy is None else 100 * r.val_accuracy,
            }
            for r in group.stopped
        ],
        "mean_percent": statistics.mean(acc) if acc else None,
        "std_percent": (statistics.stdev(acc) if len(acc) > 1 else 0.0) if acc else None,
        "wall_time_min": [r.wall_time_s / 60 for r in done if r.wall_time_s is not None],
    }
    val = [100 * r.val_accuracy for r in done if r.val_accuracy is not None]
    out["val_size"] = first.data.val_size if val else None
    out["val_mean_percent"] = statistics.mean(val) if val and len(val) == len(done) else None
    out["val_std_percent"] = (
        (statistics.stdev(val) if len(val) > 1 else 0.0) if out["val_mean_percent"] is not None else None
    )
    # the choice rules of probes are written in validation decisions, a target in test decisions
    out["val_right"], out["val_total"] = _decisions([r.val_right for r in done], [r.config.data.val_size for r in done])
    right, total = _decisions([r.test_right for r in done], [r.test_samples for r in done])
    out["test_right"], out["test_total"] = right, total
    by_seed: dict[int, list[str]] = {}
    for r in done:
        by_seed.setdefault(r.seed, []).append(str(r.path))
    # one seed in two folders (a rerun, a copy from another device): both are in the mean, which the
    # reader should know; name them apart to keep them out of it
    out["repeated_seeds"] = {str(k): v for k, v in by_seed.items() if len(v) > 1}
    if target_percent is not None and done:
        if right is not None and total:
            reached, needed = target_reached(right, total, target_percent)
            out["target"] = {"percent": float(target_percent), "reached": reached, "needed": needed}
        else:  # no whole counts: judged on the mean alone
            mean = out["mean_percent"]
            out["target"] = {"percent": float(target_percent), "reached": mean >= float(target_percent), "needed": None}
    return out


def format_summary(s: dict[str, Any]) -> str:
    """Lines of text for one group's summary."""
    lines = [f"{s['label']}: {s['dataset']} {s['arch']}, {s['epochs']} {'epoch' if s['epochs'] == 1 else 'epochs'}"]
    done = s["finished"]
    if done:
        per_seed = ", ".join(f"{d['test_accuracy_percent']:.2f}" for d in done)
        seeds = ", ".join(str(d["seed"]) for d in done)
        if len(done) == 1:
            lines.append(f"  1 finished (seed {seeds}): {per_seed} %")
        else:
            lines.append(
                f"  {len(done)} finished (seeds {seeds}): {s['mean_percent']:.3f} ± {s['std_percent']:.2f} % "
                f"({per_seed}; mean ± sample standard deviation)"
            )
        if s["test_right"] is not None:
            lines.append(f"  test decisions right: {s['test_right']:,} of {s['test_total']:,}")
        if s["val_mean_percent"] is not None:
            per_val = ", ".join(f"{d['val_accuracy_percent']:.2f}" for d in done)
            value = (
                f"{s['val_mean_percent']:.3f} ± {s['val_std_percent']:.2f} % ({per_val})"
                if len(done) > 1
                else f"{per_val} %"
            )
            where = (
                f"{s['val_size']:,} held-out training samples"
                if s["val_size"]
                else "the dataset's own validation split"  # Yin-Yang: a generated split, not held out
            )
            right = f"; {s['val_right']:,} of {s['val_total']:,} right" if s.get("val_right") is not None else ""
            lines.append(f"  validation ({where}): {value}{right}")
        walls = s["wall_time_min"]
        if walls:
            span = f"{min(walls):.1f}" if max(walls) - min(walls) < 0.05 else f"{min(walls):.1f}–{max(walls):.1f}"
            lines.append(f"  wall time per run: {span} min")
        if "target" in s:
            t = s["target"]
            verdict = "reached" if t["reached"] else "not reached"
            need = (
                f"; {t['needed']:,} right needed"
                if t["needed"] is not None
                else " (judged on the mean: no whole test counts)"
            )
            lines.append(f"  target {t['percent']:g} %: {verdict}{need}")
    for seed, paths in s.get("repeated_seeds", {}).items():
        lines.append(f"  warning: seed {seed} finished in {len(paths)} folders, each counted above: {', '.join(paths)}")
    for d in s["stopped"]:
        last = d["last_test_accuracy_percent"]
        at = f", test {last:.2f} % after it" if last is not None else ""
        if d["last_val_accuracy_percent"] is not None:
            at += f" (validation {d['last_val_accuracy_percent']:.2f} %)"
        state = "training now" if d["training"] else "stopped"
        lines.append(
            f"  seed {d['seed']} {state}: epoch {d['epochs_done']} of {s['epochs']} done{at} (not in the mean): {d['path']}"
        )
    return "\n".join(lines)
