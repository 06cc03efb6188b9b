"""The training loop: ``fit`` runs the epochs (see the package docstring for what it writes, how a resume
replays a run exactly and how data-parallel ranks share the work) and its small pieces: optimizer,
learning-rate schedule, checks of the run folder, restoring a checkpoint, the loss of one step and the
metrics of one epoch."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from relpsp.checkpoint import CheckpointError, load_checkpoint, remove_stale_temp_files
from relpsp.config import Config, config_from_dict, config_to_dict
from relpsp.functional import first_spike_decode, spike_time_cross_entropy
from relpsp.models import load_model_arrays, model_from_config
from relpsp.train.checkpointing import (
    CHECKPOINT_NAME,
    RESUME_MAY_CHANGE,
    TRAINING_PREFIX,
    config_changes,
    load_initial_weights,
    load_optimizer_state,
    resume_key,
    save_training_checkpoint,
)
from relpsp.train.distributed import DistInfo, all_reduce, barrier, dist_info, shard, sum_gradients_hook
from relpsp.train.evaluation import evaluate_on_ranks, fill_silent
from relpsp.train.inputs import augment_batch, check_splits, data_digest, data_options, epoch_order, load_splits
from relpsp.train.regularisers import SilentPenalty, SpikeDropout, SpikeJitter, WeightAverage
from relpsp.train.run_folder import DERIVED_FILES, RUN_FILES, run_folder_lock, write_json, write_metrics
from relpsp.train.runtime import CPU_TARGET_KEYS, code_versions, device_name, set_threads, threads_restored
from relpsp.train.validation import validate_config

__all__ = ["NEW_EPOCH", "fit", "lr_at", "make_optimizer"]


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """``train.optimizer`` (adam, adamw or sgd with momentum 0.9) at ``train.lr`` and ``train.weight_decay``."""
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'sgd', got {t.optimizer!r}")


def lr_at(cfg: Config, step: int, total: int) -> float:
    """The learning rate of step ``step`` (counted from 0 over the whole run) of a run of ``total`` steps:
    ``train.lr`` throughout, or under the cosine schedule lr (1 + cos(pi step / total)) / 2."""
    t = cfg.train
    if t.lr_schedule == "constant":
        return t.lr
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {t.lr_schedule!r}")


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True, leave=True, file=sys.stderr)


def _batches(order: Tensor, batch_size: int, start: int) -> Iterator[tuple[int, Tensor]]:
    n_steps = math.ceil(len(order) / batch_size)
    for step in range(start, n_steps):
        yield step, order[step * batch_size : (step + 1) * batch_size]


def _stuck_warning(epoch: int, silent_fraction: float, silent_penalty: float) -> str:
    """The line logged after an epoch in which no step had a finite non-zero gradient (``silent_penalty``:
    the weight of any penalty that gives silent neurons a gradient)."""
    msg = (
        f"warning: epoch {epoch}: no step had a finite non-zero gradient; "
        f"{100 * silent_fraction:.1f}% of the training samples had no output spike"
    )
    if silent_fraction >= 1 and silent_penalty == 0:
        msg += (
            ". With every output silent no gradient reaches any weight, so training cannot recover by itself;"
            " train.silent_penalty (every silent neuron) or train.target_penalty (a silent correct output)"
            " gives them a gradient"
        )
    return msg


def fit(
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    splits: dict[str, tuple[Tensor, Tensor]] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, checkpoint, evaluate; return the results dict (also written to ``out_dir/results.json``).

    A folder that already holds a run (a checkpoint, ``metrics.jsonl`` or ``results.json``) is continued
    with ``resume`` (from its checkpoint), replaced with ``overwrite`` (its files are deleted first) and
    otherwise refused, so that a second run into the same folder cannot destroy the first; while it
    runs, the folder is locked (``.relpsp.lock``) against other processes.
    ``splits`` overrides the dataset (tests use it); ``on_step(epoch, step)`` is called after each
    optimizer step (tests use it to interrupt a run). In a distributed run (see the package docstring)
    call it on every rank with the same arguments; every rank returns the same results.
    ``resume`` and ``overwrite`` together are refused: one continues the run, the other deletes it.
    The thread counts it gives torch and the compiled kernels (``set_threads``) are put back on return.
    """
    if resume and overwrite:
        raise ValueError(
            "resume and overwrite exclude each other: resume continues the run in the folder, "
            "overwrite deletes it and starts again; pass one"
        )
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
        held.enter_context(threads_restored())  # set_threads below is for this run only
        return _fit(
            cfg,
            out_dir,
            held,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            splits=splits,
            on_step=on_step,
            log=log,
        )


#: one epoch's counters, summed over its steps and kept in checkpoints across a resume.
#: grad_*: the global L2 norm of each step's gradient (before any clipping): sum of logs, steps, largest;
#: silent: training samples with no output spike (counted in the forward pass that trained on them);
#: train_s: seconds spent in the epoch's steps (not its evaluation), summed across resumes
NEW_EPOCH: Mapping[str, Any] = MappingProxyType(
    {
        "seen": 0,
        "correct": 0,
        "silent": 0,
        "loss_sum": 0.0,
        "clipped": 0,
        "grad_log_sum": 0.0,
        "grad_steps": 0,
        "grad_max": 0.0,
        "train_s": 0.0,
    }
)


@dataclass
class _Progress:
    """Where a run stands: the next epoch and step, the finished epochs' metrics, the counters of an epoch
    cut short (None: none), the training time of earlier calls and the calls that trained it."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, Any] | None = None
    wall_before: float = 0.0
    sessions: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False


def _check_run_folder(
    out: Path, ckpt_path: Path, resume: bool, overwrite: bool, is_main: bool, log: Callable[[str], None]
) -> list[str]:
    """Return the run files that ``overwrite`` is to delete, or refuse a folder that holds a run which is
    neither resumed nor to be overwritten (on every rank, so that all stop). The main rank first removes
    the temporary files of interrupted writes."""
    if is_main:
        for name in RUN_FILES:
            for p in remove_stale_temp_files(out / name):
                log(f"removed {p.name}, left by an interrupted write")
    left = [n for n in RUN_FILES if (out / n).exists()]
    replaced = left if not (resume and ckpt_path.exists()) else []
    if replaced and not overwrite:
        why = "has no checkpoint to resume from" if resume else "already holds a run"
        resume_hint = "" if resume else "pass --resume to continue a run from its checkpoint, "
        raise ValueError(
            f"{out} {why} ({', '.join(replaced)}); {resume_hint}"
            "--overwrite to delete these files and start again, or choose another --out folder"
        )
    return replaced


def _restore(
    ckpt_path: Path,
    cfg: Config,
    model: nn.Sequential,
    averaged: WeightAverage | None,
    opt: torch.optim.Optimizer,
    *,
    ctx: DistInfo,
    device: str,
    steps_per_epoch: int,
    train_digest: str,
    versions: dict[str, str],
    log: Callable[[str], None],
) -> _Progress:
    """Load the weights and optimizer state of ``ckpt_path`` into ``model`` (and ``averaged``) and ``opt``
    and return its progress, after refusing a checkpoint that this run would not continue: another config
    (beyond ``RESUME_MAY_CHANGE``), other training data, more epochs than asked, or ranks that disagree."""
    arrays, meta = load_checkpoint(ckpt_path)
    try:
        saved = config_from_dict(meta["config"])
        p = meta["progress"]
        start_epoch, start_step, history = int(p["epoch"]), int(p["step"]), list(p["history"])
        running = dict(p["running"]) if start_step and p.get("running") else None
        wall_before = float(p.get("wall_time_s", 0.0))
        sessions = [dict(s) for s in p.get("sessions", [])]  # absent in checkpoints written before
        saved_world = int(p.get("world_size", 1))
        opt_meta = meta["optimizer"]
        if not all(isinstance(row, dict) for row in history):
            raise TypeError("progress.history must hold one object per epoch")
        if running is not None and not set(running) <= set(NEW_EPOCH):
            raise KeyError(f"progress.running may only have the keys {sorted(NEW_EPOCH)}")
        if running is not None and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in running.values()
        ):
            raise TypeError("progress.running must hold numbers")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{ckpt_path} has no usable training state ({type(e).__name__}: {e}); "
            "it is not a resumable relpsp training checkpoint"
        ) from e
    if resume_key(saved) != resume_key(cfg):
        changed = config_changes(resume_key(saved), resume_key(cfg))
        raise ValueError(
            f"{ckpt_path} was written with a different config ({changed}); resume with the same settings "
            f"(only {', '.join(RESUME_MAY_CHANGE)} may change) or use another --out folder"
        )
    if not (0 <= start_epoch and 0 <= start_step <= steps_per_epoch and len(history) == start_epoch):
        raise CheckpointError(f"{ckpt_path}: progress epoch {start_epoch}, step {start_step} does not fit this run")
    saved_digest = p.get("train_data_sha256")  # absent in checkpoints written before it was kept
    if saved_digest is not None and saved_digest != train_digest:
        raise ValueError(
            f"{ckpt_path} was trained on other training data than this run loads (a changed --data-dir or "
            "dataset files?): the resumed run would not be the one it continues; use another --out folder"
        )
    if start_epoch + (start_step > 0) > cfg.train.epochs:
        done = f"{start_epoch} epochs" + (f" and {start_step} steps" if start_step else "")
        raise ValueError(
            f"{ckpt_path} has trained {done}, more than the {cfg.train.epochs} epochs asked for; "
            f"resume with --epochs {start_epoch + (start_step > 0)} or more, or use another --out folder"
        )
    if averaged is None:
        load_model_arrays(model, arrays)
    else:
        load_model_arrays(averaged.model, arrays)
        load_model_arrays(model, arrays, prefix=TRAINING_PREFIX + "model.")
    load_optimizer_state(opt, arrays, opt_meta)
    if all_reduce([start_epoch, start_step], ctx, device, "max") != all_reduce(
        [start_epoch, start_step], ctx, device, "min"
    ):
        raise ValueError(f"the ranks read different checkpoints from {ckpt_path}; --out must be shared")
    if start_epoch == cfg.train.epochs and start_step == 0:
        log(f"{ckpt_path} has finished its {start_epoch} epochs: evaluating it again, nothing more to train")
    else:
        log(f"resumed from {ckpt_path} at epoch {start_epoch + 1}, step {start_step}")
    step_now = start_epoch * steps_per_epoch + start_step
    lr_was = lr_at(saved, step_now, steps_per_epoch * saved.train.epochs)
    lr_now = lr_at(cfg, step_now, steps_per_epoch * cfg.train.epochs)
    if lr_now != lr_was:  # a schedule over the run's length (cosine) and a changed --epochs
        log(
            f"note: epochs changed from {saved.train.epochs} to {cfg.train.epochs}: the learning-rate schedule "
            f"is now spread over {cfg.train.epochs} epochs, so at this step it is {lr_now:.3g} "
            f"(it would have been {lr_was:.3g}); a run of {cfg.train.epochs} epochs from scratch differs"
        )
    if saved_world != ctx.world_size:
        log(
            f"note: the checkpoint was written by {saved_world} process(es), this run has {ctx.world_size}; "
            "the batches are the same, the float rounding of the gradient sums differs"
        )
    last = sessions[-1].get("versions", {}) if sessions else {}  # compared with this call's ``versions``
    moved = [
        f"{k} {last[k]} -> {versions[k]}"
        for k in CPU_TARGET_KEYS
        if k in last and k in versions and last[k] != versions[k]
    ]
    if moved:  # docs/GUIDE.md, "Repeating a run bit for bit"
        log(
            f"note: the run last trained on a CPU with other code targets ({', '.join(moved)}); the float "
            "rounding differs from a run that stayed there"
        )
    return _Progress(start_epoch, start_step, history, running, wall_before, sessions, resumed=True)


def _step_loss(
    t_out: Tensor,
    yb: Tensor,
    cfg: Config,
    penalty: SilentPenalty | None,
    target_penalty: SilentPenalty | None,
    reduce_max: Callable[[list[float]], list[float]],
) -> Tensor:
    """The loss of one step *summed* over this rank's samples: the spike-time cross-entropy, with silent
    outputs at the latest output time of the global batch plus a margin (so each rank's share is exact),
    and the penalties that give silent neurons a gradient."""
    t_filled = fill_silent(t_out, cfg.train.silent_margin, reduce_max)
    loss_sum = spike_time_cross_entropy(
        t_filled, yb, tau=cfg.train.tau, reduction="sum", label_smoothing=cfg.train.label_smoothing
    )
    if penalty is not None:
        loss_sum = loss_sum + cfg.train.silent_penalty * penalty(reduce_max)
    if target_penalty is not None:
        loss_sum = loss_sum + cfg.train.target_penalty * target_penalty(reduce_max, yb)
    return loss_sum


def _epoch_row(
    epoch: int, running: dict[str, Any], samples_per_s: float, lr_end: float, grad_clip: float
) -> dict[str, Any]:
    """The training half of an epoch's line in ``metrics.jsonl`` (the evaluations are added to it)."""
    seen = running["seen"]
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": running["loss_sum"] / max(seen, 1),
        "train_accuracy": running["correct"] / max(seen, 1),
        "train_no_output_spike_fraction": running["silent"] / max(seen, 1),
        "samples_per_s": samples_per_s,
        "lr_end": lr_end,
    }
    if grad_clip > 0:
        row["clipped_steps"] = running["clipped"]  # steps of this epoch whose gradient norm was cut
    if running["grad_steps"]:  # the typical step's gradient norm (geometric mean) and the largest
        row["grad_norm_geomean"] = math.exp(running["grad_log_sum"] / running["grad_steps"])
        row["grad_norm_max"] = running["grad_max"]
    return row


def _fit(
    cfg: Config,
    out_dir: str | os.PathLike,
    held: contextlib.ExitStack,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
    splits: dict[str, tuple[Tensor, Tensor]] | None,
    on_step: Callable[[int, int], None] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``fit``'s body; ``held`` keeps the run folder's lock until ``fit`` returns or raises."""
    validate_config(cfg)
    ctx = dist_info()
    if cfg.train.batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} (the global batch) must be divisible by the number of "
            f"processes ({ctx.world_size})"
        )
    if not ctx.is_main:
        progress = False
        log = _quiet
    device = cfg.train.device
    if ctx.world_size > 1 and device.startswith("cuda"):
        device = f"cuda:{ctx.local_rank}"  # one GPU per process
    torch.manual_seed(cfg.train.seed)
    model = model_from_config(cfg.model, backend=cfg.train.backend).to(device)  # checks the model config
    # fine-tuning: another run's network instead of random weights, checked before anything is written; a
    # resume takes its own checkpoint's weights, so the source need not exist any more
    resuming = resume and (Path(out_dir) / CHECKPOINT_NAME).is_file()
    init_digest = load_initial_weights(model, cfg) if cfg.train.init_from is not None and not resuming else None

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the run folder {out} is a file, not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        held.enter_context(run_folder_lock(out))
    ckpt_path = out / CHECKPOINT_NAME
    # a run already in the folder: continued (resume, from its checkpoint), replaced (overwrite) or refused
    replaced = _check_run_folder(out, ckpt_path, resume, overwrite, ctx.is_main, log)
    if device == "cpu":
        threads = cfg.train.threads
        if not threads and ctx.local_world_size > 1:  # share the cores between this machine's processes
            threads = max(1, (os.cpu_count() or 1) // ctx.local_world_size)
        set_threads(threads, torch_heavy=cfg.model.kernel == "window")
    num_classes = None
    if splits is None:  # the config's own dataset: its class count is known
        from relpsp.data import dataset_info

        splits = load_splits(cfg)
        num_classes = dataset_info(cfg.data.dataset, **data_options(cfg)).num_classes
    check_splits(cfg, splits, num_classes)
    if overwrite:  # only once the data loaded and fit: a run that cannot start deletes nothing
        barrier(ctx)  # every rank has looked before the main one deletes
        if ctx.is_main:
            for name in replaced:
                (out / name).unlink()
                log(f"overwrite: deleted {out / name}")
            # what `relpsp plot` and `relpsp export` write into a run folder by default: the old run's, kept
            # (they may be the user's own), but named so that nobody takes them for the new run's
            derived = [n for n in DERIVED_FILES if (out / n).is_file()]
            if replaced and derived:
                log(f"overwrite: kept {', '.join(derived)} in {out}: the old run's; remake or delete them")
    x_tr, y_tr = splits["train"]
    opt = make_optimizer(cfg, model.parameters())
    averaged = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    eval_model = averaged.model if averaged is not None else model  # the network evaluated and reported
    steps_per_epoch = math.ceil(len(y_tr) / cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs

    versions = code_versions()  # the code this call imported, read before it runs for hours
    train_digest = data_digest(x_tr, y_tr)
    found = all_reduce([float(resume and ckpt_path.exists())], ctx, device, "max")[0]
    if found and not all_reduce([float(ckpt_path.exists())], ctx, device, "min")[0]:
        raise ValueError(f"{ckpt_path} exists on some ranks only: --out must be on a filesystem all ranks share")
    if found:
        state = _restore(
            ckpt_path,
            cfg,
            model,
            averaged,
            opt,
            ctx=ctx,
            device=device,
            steps_per_epoch=steps_per_epoch,
            train_digest=train_digest,
            versions=versions,
            log=log,
        )
        if ctx.is_main:  # a kill between the checkpoint's write and this file's would leave it a line short
            write_metrics(out, state.history)
    else:
        state = _Progress()
        if resume:
            log(f"no checkpoint in {out}: starting from scratch")
    history, sessions = state.history, state.sessions  # one entry per call that trained: its code and machine
    if state.epoch < cfg.train.epochs:
        sessions.append(
            {
                "versions": versions,
                "device": device_name(device),
                "processes": ctx.world_size,
                "from_epoch": state.epoch,
                "from_step": state.step,
            }
        )
        if init_digest is not None and not found:  # the session that began from another run's network
            sessions[-1]["init_from_sha256"] = init_digest
            log(f"train.init_from: starting from the network in {cfg.train.init_from} (sha256 {init_digest})")

    train_model: nn.Module = model
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        ddp = DistributedDataParallel(model, device_ids=ids)
        ddp.register_comm_hook(None, sum_gradients_hook)
        train_model = ddp

    t_start = time.perf_counter()
    penalty = SilentPenalty(model) if cfg.train.silent_penalty > 0 else None
    target_penalty = SilentPenalty(model, target_only=True) if cfg.train.target_penalty > 0 else None
    p_dense, p_conv = cfg.train.spike_dropout, cfg.train.spike_dropout_conv
    dropout = SpikeDropout(model, p_dense, p_conv) if p_dense > 0 or p_conv > 0 else None
    jitter = SpikeJitter(model, cfg.train.spike_jitter) if cfg.train.spike_jitter > 0 else None

    def reduce_max(values: list[float]) -> list[float]:
        return all_reduce(values, ctx, device, "max")

    running = dict(NEW_EPOCH)  # this epoch's counters, kept across a resume

    def progress_state(epoch: int, step: int, wall_time_s: float) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": step,
            "history": history,
            "running": dict(running),
            "wall_time_s": wall_time_s,
            "world_size": ctx.world_size,
            "train_data_sha256": train_digest,
            "sessions": sessions,
        }

    last_saved = (state.epoch, state.step) if state.resumed else None
    # the run's wall time as of its last checkpoint: results.json reports it, so that a call that trains
    # nothing (a finished run resumed to re-evaluate it) reports the same time as the call that trained
    saved_wall = state.wall_before

    def save(epoch: int, step: int) -> None:
        nonlocal last_saved, saved_wall
        saved_wall = state.wall_before + time.perf_counter() - t_start
        if ctx.is_main:
            save_training_checkpoint(ckpt_path, model, opt, cfg, progress_state(epoch, step, saved_wall), averaged)
        barrier(ctx)  # nobody runs ahead of a checkpoint that is not on disk yet
        last_saved = (epoch, step)

    for epoch in range(state.epoch, cfg.train.epochs):
        model.train()
        order = epoch_order(cfg.train.seed, epoch, len(y_tr))
        first_step = state.step if epoch == state.epoch else 0
        bar = _progress_bar(len(y_tr), f"epoch {epoch + 1}/{cfg.train.epochs}", progress)
        if bar is not None and first_step:
            bar.update(min(first_step * cfg.train.batch_size, len(y_tr)))
        resumed_running = state.running if epoch == state.epoch else None  # the counters of an epoch cut short
        running.update(resumed_running or NEW_EPOCH)
        t_epoch = time.perf_counter()
        seen_before = running["seen"]
        train_s_before = running["train_s"]
        # a checkpoint written before "train_s" was kept has not timed the steps it holds
        timed_all = not (resumed_running and "train_s" not in resumed_running)
        for step, idx in _batches(order, cfg.train.batch_size, first_step):
            n_global = len(idx)
            lo, hi = shard(n_global, ctx)
            if cfg.data.augment:  # on the global batch: the random shifts belong to positions in it
                xb = augment_batch(x_tr[idx], cfg, epoch, step)[lo:hi]
            else:
                xb = x_tr[idx[lo:hi]]
            xb, yb = xb.to(device), y_tr[idx[lo:hi]].to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps_per_epoch + step, total_steps)
            for pen in (penalty, target_penalty):
                if pen is not None:
                    pen.records.clear()  # drop what evaluation passes recorded
            if dropout is not None:
                dropout.reseed(cfg.train.seed, epoch, step, device, rows=(lo, hi, n_global))
            if jitter is not None:
                jitter.reseed(cfg.train.seed, epoch, step, rows=(lo, hi, n_global))
            t_out = train_model(xb)
            loss_sum = _step_loss(t_out, yb, cfg, penalty, target_penalty, reduce_max)
            loss = loss_sum / n_global  # this rank's share of the global mean; DDP sums the shares' gradients
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # on the summed gradient: DDP has reduced it by now
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or math.inf))
            if not math.isfinite(norm):  # stop before the step: the weights and the last checkpoint stay good
                kept = f"{ckpt_path} holds the last checkpoint; " if last_saved is not None else ""
                raise RuntimeError(
                    f"epoch {epoch + 1}, step {step + 1}: the gradient is not finite (norm {norm}); the weights were "
                    f"not updated. {kept}train again with other settings (e.g. a smaller train.lr, or "
                    "train.grad_clip), in a new --out or with --overwrite: --resume continues with the same ones"
                )
            running["clipped"] += int(cfg.train.grad_clip > 0 and norm > cfg.train.grad_clip)
            if norm > 0:  # finite: checked above
                running["grad_log_sum"] += math.log(norm)
                running["grad_steps"] += 1
                running["grad_max"] = max(running["grad_max"], norm)
            opt.step()
            if averaged is not None:
                averaged.update(model)
            with torch.no_grad():
                pred, decided = first_spike_decode(t_out)
                correct = int((pred == yb).sum())
                silent = int((~decided).sum())
            step_loss, step_correct, step_silent = all_reduce([float(loss_sum.detach()), correct, silent], ctx, device)
            running["correct"] += round(step_correct)
            running["silent"] += round(step_silent)
            running["seen"] += n_global
            running["loss_sum"] += step_loss
            running["train_s"] = train_s_before + time.perf_counter() - t_epoch
            if bar is not None:
                bar.update(n_global)
                rate = (running["seen"] - seen_before) / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(
                    loss=f"{running['loss_sum'] / running['seen']:.4f}",
                    acc=f"{running['correct'] / running['seen']:.4f}",
                    sps=f"{rate:.0f}",
                )
            if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
                save(epoch, step + 1)
            if on_step is not None:
                on_step(epoch, step)
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - t_epoch
        if last_saved != (epoch, steps_per_epoch):  # the epoch's steps survive a failure in its evaluation
            save(epoch, steps_per_epoch)
        seen = running["seen"]
        # over the epoch's every step, also where a resume ran none of them (it began at the epoch's end)
        rate = seen / max(running["train_s"], 1e-9) if timed_all else (seen - seen_before) / max(epoch_time, 1e-9)
        row = _epoch_row(epoch, running, rate, opt.param_groups[0]["lr"], cfg.train.grad_clip)
        if not running["grad_steps"] and seen:
            guard = cfg.train.silent_penalty + cfg.train.target_penalty
            log(_stuck_warning(epoch + 1, row["train_no_output_spike_fraction"], guard))
        for split in ("val", "test"):
            if split not in splits:
                continue
            ev = evaluate_on_ranks(eval_model, *splits[split], cfg.train.eval_batch_size, device, ctx, cfg.train)
            row[f"{split}_accuracy"] = ev["accuracy"]
            row[f"{split}_loss"] = ev["loss"]
            row[f"{split}_no_output_spike_fraction"] = ev["no_output_spike_fraction"]
            if averaged is not None:  # the weights being trained, for comparison with their average
                raw = evaluate_on_ranks(model, *splits[split], cfg.train.eval_batch_size, device, ctx, cfg.train)
                row[f"raw_{split}_accuracy"] = raw["accuracy"]
        history.append(row)
        save(epoch + 1, 0)
        if ctx.is_main:
            write_metrics(out, history)
        log(
            f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  train {row['train_accuracy']:.4f}  "
            + "  ".join(f"{s} {row[f'{s}_accuracy']:.4f}" for s in ("val", "test") if f"{s}_accuracy" in row)
            + f"  {row['samples_per_s']:.0f} samples/s"
        )

    for hooks in (penalty, target_penalty, dropout, jitter):
        if hooks is not None:
            hooks.close()
    final = evaluate_on_ranks(eval_model, *splits["test"], cfg.train.eval_batch_size, device, ctx, cfg.train)
    results = {
        "test_accuracy": final["accuracy"],
        "test_samples": final["n"],  # so that accuracies over seeds add up to whole test decisions
        "test_no_output_spike_fraction": final["no_output_spike_fraction"],
        "test_tied_decision_fraction": final["tied_decision_fraction"],
        "test_loss": final["loss"],
        "firing_rates": final["firing_rates"],
        "mean_decision_time": final["mean_decision_time"],
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "epochs": cfg.train.epochs,
        # training and per-epoch evaluation up to the last checkpoint, over every call (not the final test)
        "wall_time_s": saved_wall,
        "train_samples_per_s_mean": float(np.mean([r["samples_per_s"] for r in history])) if history else None,
        "config": config_to_dict(cfg),
        "versions": versions,  # of this call; "sessions" lists those of every call that trained
        "sessions": sessions,
        "device": device_name(device),
        "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "processes": ctx.world_size,
        "history": history,
    }
    if ctx.is_main:
        write_json(out / "results.json", results)
    barrier(ctx)
    return results


def _quiet(_message: str) -> None:
    """The log of ranks other than 0."""
