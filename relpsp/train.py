"""Training, evaluation, checkpoints and resume.

``fit(cfg, out_dir)`` trains ``cfg.model`` on ``cfg.data`` and writes into ``out_dir``:

- ``checkpoint.ckpt``: weights, optimizer state and progress (``relpsp.checkpoint`` format: no pickle,
  atomic), written every ``checkpoint_every`` steps, at the end of every epoch's steps (before its
  evaluation, so a failure there loses no training) and after that evaluation;
- ``metrics.jsonl``: one JSON line per finished epoch, rewritten atomically from the history kept in
  the checkpoint just after that checkpoint is saved (a crash between the two leaves the file one line
  behind the checkpoint, and the resume rewrites it from the checkpoint);
- ``results.json``: final test accuracy, resolved config, versions, device, wall time, per-layer
  firing rates, the fractions of samples with no output spike and with a tied decision, and
  ``sessions``: the code version, device and starting point of every call that trained the run (a resume
  under other code is visible there; ``versions`` is the last call's).

Weight averaging (``train.ema_decay = d > 0``): after every optimizer step the averaged weights become
``w_avg <- d * w_avg + (1 - d) * w``, starting from the initial weights. The averaged network is the one
evaluated and reported, and the checkpoint's ``model.*`` arrays hold it (so ``eval``, ``simulate``,
``cost`` and ``export`` use it); the weights being trained are kept as ``training.model.*`` for resume,
and each epoch's metrics also give their accuracy as ``raw_test_accuracy`` (and ``raw_val_accuracy``
with a validation split, so that averaging or not can be chosen on validation data).

Determinism: the weights come from ``seed``; the sample order of epoch ``e`` is a permutation drawn from
a generator seeded with ``(seed, e)``; the learning rate is a pure function of the step. A run resumed
from any checkpoint therefore replays exactly the steps an uninterrupted run would take (on CPU, with
the same thread count and number of processes).

Data parallel (``torchrun``, see README): when a ``torch.distributed`` process group is initialised
(``relpsp train`` initialises one when ``WORLD_SIZE > 1``), every rank takes a contiguous
``1/world_size`` slice of each global batch of the same seeded epoch order, so the union over ranks is
exactly the single-process batch; ``train.batch_size`` stays the *global* batch. Each rank's loss is the
*sum* over its slice divided by the global batch size, and DistributedDataParallel sums the gradients
(a sum communication hook instead of the default mean), so the update is the single-process mean-loss
gradient also for a last batch that does not split evenly. Batch-level quantities of the loss (the time
given to silent outputs, the silent-penalty horizon) are reduced across ranks first. Metrics and
evaluations are reduced across ranks; rank 0 alone prints and writes files, and every rank resumes from
the same checkpoint. The result equals a single-process run up to float rounding (the gradient sums are
added in a different order), which ``tests/test_distributed.py`` checks.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from relpsp import __version__
from relpsp._fileio import json_text
from relpsp._validate import check_positive_int
from relpsp.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from relpsp.config import Config, TrainConfig, config_from_dict, config_to_dict
from relpsp.functional import first_spike_decode, spike_time_cross_entropy
from relpsp.kernels import set_cpu_kernel_threads
from relpsp.models import layer_outputs, load_model_arrays, model_arrays, model_from_config

__all__ = [
    "CHECKPOINT_NAME",
    "DistInfo",
    "WeightAverage",
    "data_options",
    "device_name",
    "dist_info",
    "evaluate",
    "fit",
    "init_distributed",
    "load_trained",
    "make_optimizer",
    "set_threads",
]

CHECKPOINT_NAME = "checkpoint.ckpt"


def set_threads(threads: int, torch_heavy: bool = False) -> None:
    """Give the cores to the compiled kernels. torch and numba each bring their own OpenMP pool; when both
    run several threads they fight for the cores (we measured training 5x slower), so torch, which only does
    small elementwise work here, gets one thread and numba gets ``threads`` (0: all cores). With
    ``torch_heavy`` (networks whose layers are torch matrix products, such as the windowed neuron) torch gets
    them instead."""
    n = threads or os.cpu_count() or 1
    if set_cpu_kernel_threads(1 if torch_heavy else n) and not torch_heavy:
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "cpu") -> bool:
    """Under ``torchrun`` (``WORLD_SIZE > 1``), initialise the default process group from the environment
    (gloo on CPU, nccl on CUDA, after selecting GPU ``LOCAL_RANK``) unless one exists. Return whether this
    call created it (the caller then ends it with ``torch.distributed.destroy_process_group()``)."""
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True


def dist_info() -> DistInfo:
    """Rank and world size of the initialised process group, or a single process.

    Raises ``ValueError`` when ``WORLD_SIZE > 1`` is set but no group exists: each process would then
    train alone and they would overwrite each other's files.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", world))
    if _env_int("WORLD_SIZE", 1) > 1:
        raise ValueError(
            "WORLD_SIZE > 1 (torchrun?) but no torch.distributed process group is initialised; "
            "run `relpsp train` or call relpsp.train.init_distributed() before fit()"
        )
    return DistInfo()


def _all_reduce(values: list[float], ctx: DistInfo, device: str, op: str = "sum") -> list[float]:
    """Element-wise sum / max / min of ``values`` over the ranks (float64; identity on one process)."""
    if ctx.world_size == 1:
        return list(values)
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=ops[op])
    return t.tolist()


def _barrier(ctx: DistInfo) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _shard(n: int, ctx: DistInfo) -> tuple[int, int]:
    """Bounds of this rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
    return ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size


def _allreduce_sum_hook(_state, bucket):  # no annotations: DDP checks them against its own types
    """DDP communication hook: sum the gradients over the ranks (the default hook averages them). Each
    rank's loss is already its share of the global mean, so the sum is the global gradient."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'sgd', got {t.optimizer!r}")


def _lr_at(cfg: Config, step: int, total: int) -> float:
    t = cfg.train
    if t.lr_schedule == "constant":
        return t.lr
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {t.lr_schedule!r}")


def _validate(cfg: Config) -> None:
    t = cfg.train
    for name, v in (("epochs", t.epochs), ("batch_size", t.batch_size), ("eval_batch_size", t.eval_batch_size)):
        if v < 1:
            raise ValueError(f"train.{name} must be >= 1, got {v}")
    if not (math.isfinite(t.lr) and 0 < t.lr < 10):
        raise ValueError(f"train.lr must be in (0, 10), got {t.lr}")
    if t.batch_size > 1_000_000 or t.epochs > 100_000:
        raise ValueError("train.batch_size or train.epochs is absurdly large")
    if t.checkpoint_every < 0 or t.threads < 0:
        raise ValueError("train.checkpoint_every and train.threads must be >= 0")
    if t.threads > 4096 or t.eval_batch_size > 1_000_000:
        raise ValueError("train.threads or train.eval_batch_size is absurdly large")
    if not 0 <= t.seed < 2**32:
        raise ValueError(f"train.seed must be in [0, 2^32), got {t.seed}")
    if not (math.isfinite(t.ema_decay) and 0 <= t.ema_decay < 1):
        raise ValueError(f"train.ema_decay must be in [0, 1) (0 = no weight averaging), got {t.ema_decay}")
    for name in ("weight_decay", "grad_clip", "silent_margin", "silent_penalty", "target_penalty", "tau"):
        v = getattr(t, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"train.{name} must be a finite number >= 0, got {v}")
    if t.tau == 0:
        raise ValueError("train.tau must be > 0")
    if not (math.isfinite(t.spike_dropout) and 0 <= t.spike_dropout < 1):
        raise ValueError(f"train.spike_dropout must be in [0, 1) (0 = off), got {t.spike_dropout}")
    if t.spike_dropout > 0 and cfg.model.kernel != "relpsp":
        raise ValueError("train.spike_dropout is defined for the ReL-PSP kernel only (model.kernel = 'relpsp')")
    if t.spike_dropout > 0 and (t.silent_penalty > 0 or t.target_penalty > 0):
        raise ValueError("train.spike_dropout cannot be combined with train.silent_penalty or train.target_penalty")
    if t.optimizer not in ("adam", "adamw", "sgd"):
        raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'sgd', got {t.optimizer!r}")
    if t.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {t.lr_schedule!r}")
    from relpsp.autograd import BACKENDS

    if t.backend not in BACKENDS:
        raise ValueError(f"train.backend must be one of {BACKENDS}, got {t.backend!r}")
    if t.device != "cpu" and not t.device.startswith("cuda"):
        raise ValueError(f"train.device must be 'cpu' or 'cuda[:N]', got {t.device!r}")
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but torch sees no CUDA device")
    if cfg.data.val_size < 0 or cfg.data.train_size < 0:
        raise ValueError("data.val_size and data.train_size must be >= 0")
    if not 0 <= cfg.data.max_shift <= 64:
        raise ValueError(f"data.max_shift must be in [0, 64], got {cfg.data.max_shift}")
    _validate_data_settings(cfg)
    if cfg.model.kernel == "window" and (t.silent_penalty > 0 or t.target_penalty > 0):
        raise ValueError(
            "train.silent_penalty and train.target_penalty do not apply to kernel window: every windowed neuron fires"
        )
    if cfg.model.kernel == "alpha":
        if t.silent_penalty > 0 or t.target_penalty > 0:
            raise ValueError(
                "train.silent_penalty and train.target_penalty are defined for the ReL-PSP kernel only;"
                " set them to 0 with kernel alpha"
            )
        if t.device != "cpu":
            raise ValueError("the alpha-kernel baseline runs on the CPU only (train.device = 'cpu')")


def _validate_data_settings(cfg: Config) -> None:
    """Refuse data settings that would do nothing for this dataset, instead of ignoring them."""
    from relpsp.data import DATASETS, canonical_name

    d = cfg.data
    try:
        name = canonical_name(d.dataset)
    except ValueError:  # a set given as tensors to fit(splits=...) under a name of its own
        name = d.dataset
    if d.flip and not d.augment:
        raise ValueError("data.flip mirrors images as part of the augmentation: it needs data.augment = true")
    if d.bias_input >= 0 and name != "yinyang":
        raise ValueError(f"data.bias_input applies to the Yin-Yang feature set only, not {name!r}; leave it at -1")
    if d.val_size and name in DATASETS and "val" in DATASETS[name].split_sizes:
        raise ValueError(
            f"data.val_size holds images out of the training set, but {name!r} has a validation split of its own;"
            " leave it at 0"
        )
    if d.image_size and name != "caltech-face-motorbike":
        raise ValueError(
            f"data.image_size applies to image-folder sets (caltech-face-motorbike) only, not {name!r}; leave it empty"
        )


# --------------------------------------------------------------------------------------------------- data


def load_splits(cfg: Config) -> dict[str, tuple[Tensor, Tensor]]:
    """Train / (val) / test tensors; the validation set is held out of the training set by a seeded draw."""
    from relpsp.data import dataset_info, load_dataset

    opts = data_options(cfg)
    x_tr, y_tr = load_dataset(cfg.data.dataset, "train", cfg.data.data_dir, **opts)
    x_te, y_te = load_dataset(cfg.data.dataset, "test", cfg.data.data_dir, **opts)
    splits = {"train": (x_tr, y_tr), "test": (x_te, y_te)}
    if "val" in dataset_info(cfg.data.dataset, **opts).split_sizes:
        splits["val"] = load_dataset(cfg.data.dataset, "val", cfg.data.data_dir, **opts)
    elif cfg.data.val_size:
        if cfg.data.val_size >= len(y_tr):
            raise ValueError(f"data.val_size {cfg.data.val_size} must be smaller than the training set ({len(y_tr)})")
        g = torch.Generator().manual_seed(cfg.train.seed + 7919)
        perm = torch.randperm(len(y_tr), generator=g)
        val, tr = perm[: cfg.data.val_size], perm[cfg.data.val_size :]
        splits["val"] = (x_tr[val], y_tr[val])
        splits["train"] = (x_tr[tr], y_tr[tr])
    if cfg.data.train_size:
        x_tr, y_tr = splits["train"]
        if cfg.data.train_size > len(y_tr):
            raise ValueError(f"data.train_size {cfg.data.train_size} is larger than the training set ({len(y_tr)})")
        g = torch.Generator().manual_seed(cfg.train.seed + 104729)
        keep = torch.randperm(len(y_tr), generator=g)[: cfg.data.train_size]
        splits["train"] = (x_tr[keep], y_tr[keep])
    return splits


def _check_splits(cfg: Config, splits: dict[str, tuple[Tensor, Tensor]]) -> None:
    if cfg.data.augment:
        if splits["train"][0].dim() != 4:
            raise ValueError(
                f"data.augment shifts images, but {cfg.data.dataset!r} has inputs of shape "
                f"{tuple(splits['train'][0].shape[1:])}; set data.augment = false"
            )
        h, w = splits["train"][0].shape[2:]
        if cfg.data.max_shift >= min(h, w):
            raise ValueError(
                f"data.max_shift {cfg.data.max_shift} would shift {h}x{w} images out of the frame; it must be "
                f"smaller than {min(h, w)}"
            )
        if cfg.data.max_shift == 0 and not cfg.data.flip:
            raise ValueError("data.augment with data.max_shift = 0 and no data.flip changes nothing; set augment false")
    for name, (x, y) in splits.items():
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"{name} split has {len(x)} inputs and {len(y)} labels; need as many, and at least one")
        if tuple(x.shape[1:]) != tuple(cfg.model.input_shape):
            raise ValueError(
                f"dataset {cfg.data.dataset!r} has inputs of shape {tuple(x.shape[1:])} but model.input_shape is "
                f"{tuple(cfg.model.input_shape)}; set model.input_shape (e.g. --set model.input_shape=[1,28,28])"
            )


def data_options(cfg: Config, dataset: str | None = None) -> dict[str, Any]:
    """Loader options implied by the data config (see ``relpsp.data.load_dataset``) for ``dataset``
    (default: the config's own): the inversion of intensities for any set, Caltech's image size and
    Yin-Yang's bias input where ``dataset`` is of that kind."""
    from relpsp.data import canonical_name

    name = canonical_name(dataset or cfg.data.dataset)
    opts: dict[str, Any] = {}
    if name == "yinyang" and cfg.data.bias_input >= 0:
        opts["bias"] = cfg.data.bias_input
    if name == "caltech-face-motorbike" and cfg.data.image_size:
        opts["image_size"] = tuple(cfg.data.image_size)
    if cfg.data.invert:
        opts["invert"] = True  # refused by load_dataset for feature sets (Yin-Yang)
    if cfg.data.dog:  # likewise
        opts.update(dog=True, dog_sigmas=tuple(cfg.data.dog_sigmas), dog_threshold=cfg.data.dog_threshold)
    return opts


def _data_digest(x: Tensor, y: Tensor) -> str:
    """SHA-256 of the training split as trained on (inputs and labels, in order), kept in checkpoints so
    that a resume on other data is refused."""
    h = hashlib.sha256()
    for t in (x, y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _step_key(stream: str, legacy: int, in_range: bool, *parts: int) -> int:
    """Generator key for one training step's random draws. Within the range where the original packed
    formula ``legacy`` is one-to-one (``in_range``) and below 2**63, it is kept, so runs made with it
    replay unchanged; elsewhere (very many steps per epoch, or a seed so large that the packed number
    would not fit torch's 64-bit seed) the key is a SHA-256 hash of (stream, parts) with the top bit set,
    which no packed key reaches."""
    if in_range and 0 <= legacy < 2**63:
        return legacy
    digest = hashlib.sha256(":".join([stream, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") | (1 << 63)


def _augment(x: Tensor, seed: int, epoch: int, step: int, max_shift: int = 2, flip: bool = False) -> Tensor:
    """Shift every image by its own random offset of up to ``max_shift`` pixels in each direction (zero
    fill) and, with ``flip``, mirror it left-right with probability 1/2; drawn from a generator seeded by
    (seed, epoch, step), so resumed runs see the same transformations."""
    if x.dim() != 4:
        return x
    legacy = (seed * 1_000_003 + epoch) * 100_003 + step
    in_range = step < 100_003 and epoch < 1_000_003
    g = torch.Generator().manual_seed(_step_key("augment", legacy, in_range, seed, epoch, step))
    shifts = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=g)
    if flip:
        mirror = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    out = torch.zeros_like(x)
    h, w = x.shape[2], x.shape[3]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            sel = torch.nonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).squeeze(1)
            if len(sel):
                out[sel, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
                    sel, :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
                ]
    return out


# ---------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1000,
    device: str = "cpu",
    tau: float = TrainConfig.tau,
    silent_margin: float = TrainConfig.silent_margin,
) -> dict[str, Any]:
    """Accuracy (no output spike counts as wrong), no-spike fraction, loss (with the training loss's time
    scale ``tau`` and ``silent_margin``, so it compares with the training loss), firing rate of every layer
    (fraction of neurons that spike, averaged over samples), mean output spike time of the winner and
    the fraction of samples whose earliest output time several outputs share (``tied_decision_fraction``:
    they are decoded as the lowest class index among them, so a network that ties often can score above
    what it decides; with the windowed neuron, whose times are clamped to the window, this can happen).

    In the loss, an output that never fires counts as firing at the latest output spike of the whole set
    plus ``silent_margin`` (the training loss takes the latest of its batch), so the value does not depend
    on ``batch_size``."""
    check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
    return _eval_summary(_eval_sums(model, x, y, batch_size, device, tau, silent_margin))


def _eval_sums(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: str,
    tau: float,
    silent_margin: float,
    reduce_max: Callable[[list[float]], list[float]] | None = None,
) -> list[float]:
    """``[n, correct, silent, loss_sum, decision_time_sum, tied, *rate_sums]``: sums, so that ranks can add
    them; ``tied`` counts the samples whose earliest output time is shared by several outputs (decoded as
    the lowest of them, ``first_spike_decode``).
    ``reduce_max`` (every rank calls it once) takes the latest output time over all ranks, so that silent
    outputs get the same time in every rank's share of the loss."""
    model.eval()
    correct = 0
    silent = 0
    tied = 0
    rates = [0.0] * len(model)
    t_win = 0.0
    t_outs: list[Tensor] = []  # kept (a few values per sample) for the loss after the loop
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            xb, yb = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
            outs = layer_outputs(model, xb)
            t_out = outs[-1]
            pred, fired = first_spike_decode(t_out)
            correct += int((pred == yb).sum())
            silent += int((~fired).sum())
            t_outs.append(t_out.detach().to("cpu", torch.float64))
            rates = [a + float(torch.isfinite(o).float().mean()) * len(yb) for a, o in zip(rates, outs)]
            if bool(fired.any()):
                first = t_out.min(1, keepdim=True).values
                t_win += float(first[fired].sum())
                tied += int(((t_out == first).sum(1) > 1)[fired].sum())
        t_all = torch.cat(t_outs) if t_outs else torch.empty(0, 1, dtype=torch.float64)
        t_filled = _fill_silent(t_all, silent_margin, reduce_max or (lambda v: v))
        loss_sum = float(spike_time_cross_entropy(t_filled, y.cpu(), tau=tau, reduction="sum")) if len(y) else 0.0
    return [float(len(y)), float(correct), float(silent), loss_sum, t_win, float(tied), *rates]


def _fill_silent(t_out: Tensor, silent_margin: float, reduce_max: Callable[[list[float]], list[float]]) -> Tensor:
    """``t_out`` with silent outputs (+inf) at the latest output time of all of it, taken over every rank by
    ``reduce_max``, plus ``silent_margin`` (0 + margin if nothing fired): what ``spike_time_cross_entropy``
    does within one tensor, made exact for a batch or split shared by several ranks. The filled time
    carries no gradient; fired outputs keep theirs."""
    fired = torch.isfinite(t_out)
    with torch.no_grad():
        finite = t_out[fired]
        t_last = reduce_max([float(finite.max()) if finite.numel() else -math.inf])[0]
    t_late = (t_last if t_last > -math.inf else 0.0) + silent_margin
    return torch.where(fired, t_out, torch.tensor(t_late, dtype=t_out.dtype, device=t_out.device))


def _eval_summary(sums: list[float]) -> dict[str, Any]:
    n_total, correct, silent, loss_sum, t_win, tied = sums[:6]
    n = max(n_total, 1)
    return {
        "accuracy": correct / n,
        "no_output_spike_fraction": silent / n,
        "loss": loss_sum / n,
        "firing_rates": [r / n for r in sums[6:]] if n_total else [],
        "tied_decision_fraction": tied / n,
        "mean_decision_time": t_win / max(n - silent, 1),
        "n": round(n_total),
    }


def _evaluate(
    model: nn.Sequential, x: Tensor, y: Tensor, batch_size: int, device: str, ctx: DistInfo, train_cfg: TrainConfig
) -> dict[str, Any]:
    """``evaluate`` with the samples split over the ranks and the sums added up."""
    lo, hi = _shard(len(y), ctx)

    def reduce_max(values: list[float]) -> list[float]:
        return _all_reduce(values, ctx, device, "max")

    sums = _eval_sums(model, x[lo:hi], y[lo:hi], batch_size, device, train_cfg.tau, train_cfg.silent_margin, reduce_max)
    return _eval_summary(_all_reduce(sums, ctx, device))


# ------------------------------------------------------------------------------------------- checkpoints


def _optimizer_arrays(opt: torch.optim.Optimizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    sd = opt.state_dict()
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                arrays[f"optim.{pid}.{k}"] = v.detach().cpu().numpy()
            else:
                scalars.setdefault(str(pid), {})[k] = float(v)
    return arrays, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Restore the optimizer state; raise ``ValueError`` when it does not fit this model and optimizer."""
    sd = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    try:
        for pid_s, sc in meta["scalars"].items():
            state[int(pid_s)] = {k: torch.tensor(float(v), dtype=torch.float32) for k, v in sc.items()}
        for name, a in arrays.items():
            if name.startswith("optim."):
                _, pid_s, k = name.split(".", 2)
                pid = int(pid_s)
                if not 0 <= pid < len(params) or tuple(a.shape) != tuple(params[pid].shape):
                    raise ValueError(f"array {name!r} of shape {a.shape} fits no parameter")
                if a.dtype.kind != "f" or not np.isfinite(a).all():
                    raise ValueError(f"array {name!r} is not finite floating-point data")
                state.setdefault(pid, {})[k] = torch.from_numpy(np.array(a))
        if set(state) - set(range(len(params))):
            raise ValueError("state for parameters this model does not have")
        sd["state"] = state
        sd["param_groups"] = meta["param_groups"]
        opt.load_state_dict(sd)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"the optimizer state in the checkpoint does not fit this model ({e})") from e


TRAINING_PREFIX = "training."  # with weight averaging: the weights being trained (``model.*`` is the average)


def _save_training_checkpoint(
    path: Path, model, opt, cfg: Config, progress: dict[str, Any], averaged: WeightAverage | None = None
) -> None:
    if averaged is None:
        arrays = model_arrays(model)
    else:
        arrays = model_arrays(averaged.model)
        arrays.update(model_arrays(model, prefix=TRAINING_PREFIX + "model."))
    o_arrays, o_meta = _optimizer_arrays(opt)
    arrays.update(o_arrays)
    meta = {
        "config": config_to_dict(cfg),
        "version": __version__,
        "optimizer": o_meta,
        "progress": progress,
    }
    save_checkpoint(path, arrays, meta)


def load_trained(path: str | os.PathLike, backend: str = "auto") -> tuple[nn.Sequential, Config, dict[str, Any]]:
    """Model (eval mode), resolved config and metadata from a checkpoint file."""
    arrays, meta = load_checkpoint(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no config: not a relpsp training checkpoint")
    cfg = config_from_dict(meta["config"])
    model = model_from_config(cfg.model, backend=backend)
    load_model_arrays(model, arrays)
    model.eval()
    return model, cfg, meta


# ----------------------------------------------------------------------------------------------- training


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging): ``update`` sets every parameter
    of ``self.model`` to ``decay * avg + (1 - decay) * current`` and copies the buffers. The average
    starts as a copy of the model it is built from; about ``1 / (1 - decay)`` recent steps carry weight."""

    def __init__(self, model: nn.Sequential, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Sequential) -> None:
        for avg, cur in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur, 1.0 - self.decay)
        for buf, src in zip(self.model.buffers(), model.buffers(), strict=True):
            buf.copy_(src)


class _SilentPenalty:
    """Sums ``silent_neuron_penalty`` over the spiking layers of one forward pass, read through forward
    hooks (the modules stay stateless). ``t_end`` of a layer: the latest spike it fired in the batch
    (capped by its cut-off), so silent neurons are pushed to fire within the range the others use.

    With ``target_only`` only the output layer is read, and of its neurons only the correct output of
    each sample (the others are passed as having fired): the term then acts only where a sample's correct
    output is silent, the case in which the spike-time loss sends the output layer no gradient."""

    def __init__(self, model: nn.Sequential, *, target_only: bool = False) -> None:
        from relpsp.nn import SpikingConv2d, SpikingLinear

        self.records: list[tuple[Any, Tensor, Tensor]] = []
        layers = [m for m in model if isinstance(m, (SpikingLinear, SpikingConv2d))]
        if target_only:
            if not layers or layers[-1] is not list(model)[-1] or not isinstance(layers[-1], SpikingLinear):
                raise ValueError("train.target_penalty needs a network that ends in a spiking dense layer")
            layers = layers[-1:]
        self.target_only = target_only
        self.handles = [m.register_forward_hook(self._record) for m in layers]

    def _record(self, mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if mod.training and torch.is_grad_enabled():  # evaluation passes would only hold memory
            self.records.append((mod, inp[0], out))

    def __call__(
        self, reduce_max: Callable[[list[float]], list[float]] | None = None, target: Tensor | None = None
    ) -> Tensor:
        """The penalty *summed* over the samples of this batch (the caller divides by the global batch
        size). ``reduce_max`` makes the latest spike times global over the ranks of a distributed run, so
        every rank uses the horizon a single process would. ``target``: the labels (``target_only``)."""
        from relpsp.functional import silent_neuron_penalty

        if self.target_only and target is None:
            raise ValueError("the target penalty needs the batch's labels")
        latest: list[float] = []  # per layer: latest output spike, latest input spike (-inf: none)
        with torch.no_grad():
            for _mod, t_in, t_out in self.records:
                for t in (t_out, t_in):
                    finite = t[torch.isfinite(t)]
                    latest.append(float(finite.max()) if finite.numel() else -math.inf)
        if reduce_max is not None:
            latest = reduce_max(latest)
        total = torch.zeros(())
        for k, (mod, t_in, t_out) in enumerate(self.records):
            last_out, last_in = latest[2 * k], latest[2 * k + 1]
            if last_out > -math.inf:
                t_end = min(last_out, mod.t_max)
            elif last_in > -math.inf:
                t_end = min(last_in + 1.0, mod.t_max)
            else:
                continue
            if self.target_only and target is not None:  # every other output counts as fired (time 0)
                is_target = torch.nn.functional.one_hot(target, t_out.shape[1]).bool()
                t_out = torch.where(is_target, t_out.detach(), t_out.new_zeros(()))
            kw = {"stride": mod.stride, "padding": mod.padding} if t_in.dim() == 4 else {}
            mean = silent_neuron_penalty(t_in, mod.weight, t_out, t_end=t_end, theta=mod.theta, **kw)
            total = total + mean * t_out.shape[0]
        self.records.clear()
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _SpikeDropout:
    """Training-time dropout for spike times, attached to every ReL-PSP dense layer through hooks (the
    network itself, its checkpoint, export and inference are unchanged). In a forward pass in training
    mode each input spike of the layer is deleted (its time set to +inf) with probability ``p``, and the
    layer's threshold is scaled by ``1 - p`` for that pass: firing at ``sum_causal w_i (t - t_i) = theta``
    with weights ``w / (1 - p)`` is firing at threshold ``theta * (1 - p)`` with ``w``, so at any time the
    expected potential over the masks equals that of the full input at evaluation (the analogue of
    inverted dropout; the firing time itself is not preserved exactly, as it is not linear). The masks
    come from a generator reseeded before every step from (seed, epoch, step), so a run and its resume
    draw the same masks; each layer draws the mask of the whole global batch and keeps this process's
    rows, so a data-parallel run drops the spikes that a single process would."""

    def __init__(self, model: nn.Sequential, p: float) -> None:
        from relpsp.nn import SpikingLinear

        self.p = p
        self.layers = [m for m in model if isinstance(m, SpikingLinear)]
        if not self.layers:
            raise ValueError("train.spike_dropout needs a network with a spiking dense layer")
        self.theta = {id(m): m.theta for m in self.layers}
        self.generator: torch.Generator | None = None
        self.rows: tuple[int, int, int] | None = None
        self.handles = []
        for m in self.layers:
            self.handles.append(m.register_forward_pre_hook(self._drop))
            self.handles.append(m.register_forward_hook(self._restore))

    def reseed(self, seed: int, epoch: int, step: int, device: str, rows: tuple[int, int, int] | None = None) -> None:
        """Seed the masks of one step; ``rows = (lo, hi, n_global)``: this process holds rows lo:hi of
        a global batch of n_global (None: the whole batch)."""
        # always a CPU generator (the masks are moved to the device): CPU and CUDA generators give different
        # numbers for one seed, and a run may be resumed on another device type
        del device
        self.generator = torch.Generator()
        self.rows = rows
        # the packed key of the first runs (its last slot held a rank, always 0 there); one-to-one while
        # epoch * 10_007 + step stays below the seed's radix 1_000_003
        legacy = (seed * 1_000_003 + epoch * 10_007 + step) * 1_009 + 0x5D10
        in_range = step < 10_007 and epoch * 10_007 + step < 1_000_003
        self.generator.manual_seed(_step_key("spike-dropout", legacy, in_range, seed, epoch, step, 0))

    def _drop(self, mod: Any, args: tuple[Tensor, ...]):
        if not mod.training or self.generator is None:
            return None
        t_in = args[0]
        lo, hi, n = self.rows if self.rows is not None else (0, len(t_in), len(t_in))
        if hi - lo != len(t_in):
            raise RuntimeError(f"spike dropout expected rows {lo}:{hi} of the batch, got {len(t_in)}")
        shape = (n, *t_in.shape[1:])
        u = torch.rand(shape, generator=self.generator, dtype=t_in.dtype)[lo:hi].to(t_in.device)
        mod.theta = self.theta[id(mod)] * (1.0 - self.p)
        return (torch.where(u < self.p, torch.full_like(t_in, math.inf), t_in), *args[1:])

    def _restore(self, mod: Any, _args: Any, _out: Any) -> None:
        mod.theta = self.theta[id(mod)]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.layers:
            m.theta = self.theta[id(m)]


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


def _versions() -> dict[str, str]:
    v = {
        "relpsp": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import numba

        v["numba"] = numba.__version__
    except ImportError:
        pass
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here
        ).stdout.strip()
        if commit:
            v["commit"] = commit
            # Whether the package's files differ from that commit (the run used code the commit lacks).
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=here,
            ).stdout.strip()
            v["source_modified"] = "yes" if status else "no"
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def device_name(device: str = "cpu") -> str:
    """The CUDA device's name, or the CPU model (from /proc/cpuinfo where available) and core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} cores)"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json_text(obj, sort_keys=True) + "\n").encode())


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


LOCK_NAME = ".relpsp.lock"
#: the files of a run folder that a run writes (and a new run into the folder would replace)
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "results.json")


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``out/metrics.jsonl``: one strict JSON line per finished epoch (a non-finite number as ``null``),
    written atomically."""
    atomic_write_bytes(out / "metrics.jsonl", "".join(json_text(r, indent=None) + "\n" for r in history).encode())


@contextlib.contextmanager
def _run_folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out/.relpsp.lock`` (POSIX ``flock``; nothing elsewhere) for one run:
    a second process training into the same folder is refused instead of interleaving its writes (and
    removing the first one's temporary files). The lock file stays; the lock goes with the process."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another process is training into {out}; wait for it or use another --out folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


#: training settings that a resumed run may change: they do not alter the trained network's arithmetic
#: beyond float rounding (devices, kernels and thread counts round differently) or where the data lies
RESUME_MAY_CHANGE = (
    "train.epochs",
    "train.device",
    "train.backend",
    "train.threads",
    "train.eval_batch_size",
    "train.checkpoint_every",
    "data.data_dir",
)


def _resume_key(cfg: Config) -> Config:
    """``cfg`` with the settings of ``RESUME_MAY_CHANGE`` at their defaults: equal keys may resume each other."""
    default = Config()
    sections = {}
    for name in ("train", "data"):
        keys = [k.split(".")[1] for k in RESUME_MAY_CHANGE if k.startswith(name + ".")]
        sections[name] = replace(getattr(cfg, name), **{k: getattr(getattr(default, name), k) for k in keys})
    return replace(cfg, **sections)


def _config_changes(a: Config, b: Config) -> str:
    """The fields that differ between two configs, as ``section.key a -> b`` (for error messages)."""
    da, db = config_to_dict(a), config_to_dict(b)
    diffs = [
        f"{sec}.{k} {da[sec].get(k)!r} -> {db[sec].get(k)!r}"
        for sec in da
        for k in sorted(set(da[sec]) | set(db[sec]))
        if da[sec].get(k) != db[sec].get(k)
    ]
    return ", ".join(diffs) or "no field differs"


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
    optimizer step (tests use it to interrupt a run). In a distributed run (see the module docstring)
    call it on every rank with the same arguments; every rank returns the same results.
    ``resume`` and ``overwrite`` together are refused: one continues the run, the other deletes it.
    """
    if resume and overwrite:
        raise ValueError(
            "resume and overwrite exclude each other: resume continues the run in the folder, "
            "overwrite deletes it and starts again; pass one"
        )
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
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
    _validate(cfg)
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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        held.enter_context(_run_folder_lock(out))
    ckpt_path = out / CHECKPOINT_NAME
    if ctx.is_main:  # temporary files of writes that a kill interrupted
        for name in RUN_FILES:
            for p in remove_stale_temp_files(out / name):
                log(f"removed {p.name}, left by an interrupted write")
    # a run already in the folder: continued (resume, from its checkpoint), replaced (overwrite) or refused
    left = [n for n in RUN_FILES if (out / n).exists()]
    replaced = left if not (resume and ckpt_path.exists()) else []
    if replaced and not overwrite:
        why = "has no checkpoint to resume from" if resume else "already holds a run"
        raise ValueError(
            f"{out} {why} ({', '.join(replaced)}); pass --resume to continue a run from its checkpoint, "
            "--overwrite to delete these files and start again, or choose another --out folder"
        )
    if device == "cpu":
        threads = cfg.train.threads
        if not threads and ctx.local_world_size > 1:  # share the cores between this machine's processes
            threads = max(1, (os.cpu_count() or 1) // ctx.local_world_size)
        set_threads(threads, torch_heavy=cfg.model.kernel == "window")
    splits = splits if splits is not None else load_splits(cfg)
    _check_splits(cfg, splits)
    if overwrite:  # only once the data loaded and fit: a run that cannot start deletes nothing
        _barrier(ctx)  # every rank has looked before the main one deletes
        if ctx.is_main:
            for name in replaced:
                (out / name).unlink()
                log(f"overwrite: deleted {out / name}")
    x_tr, y_tr = splits["train"]
    opt = make_optimizer(cfg, model.parameters())
    averaged = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    eval_model = averaged.model if averaged is not None else model  # the network evaluated and reported
    steps_per_epoch = math.ceil(len(y_tr) / cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    start_epoch, start_step, history, wall_before = 0, 0, [], 0.0
    sessions: list[dict[str, Any]] = []  # one entry per call that trained: the code and machine it ran on
    resumed_running: dict[str, Any] | None = None

    versions = _versions()  # the code this call imported, read before it runs for hours
    data_digest = _data_digest(x_tr, y_tr)
    found = _all_reduce([float(resume and ckpt_path.exists())], ctx, device, "max")[0]
    if found and not _all_reduce([float(ckpt_path.exists())], ctx, device, "min")[0]:
        raise ValueError(f"{ckpt_path} exists on some ranks only: --out must be on a filesystem all ranks share")
    if found:
        arrays, meta = load_checkpoint(ckpt_path)
        try:
            saved = config_from_dict(meta["config"])
            p = meta["progress"]
            start_epoch, start_step, history = int(p["epoch"]), int(p["step"]), list(p["history"])
            resumed_running = dict(p["running"]) if start_step and p.get("running") else None
            wall_before = float(p.get("wall_time_s", 0.0))
            sessions = [dict(s) for s in p.get("sessions", [])]  # absent in checkpoints written before
            saved_world = int(p.get("world_size", 1))
            opt_meta = meta["optimizer"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{ckpt_path} has no usable training state ({type(e).__name__}: {e}); "
                "it is not a resumable relpsp training checkpoint"
            ) from e
        if _resume_key(saved) != _resume_key(cfg):
            changed = _config_changes(_resume_key(saved), _resume_key(cfg))
            raise ValueError(
                f"{ckpt_path} was written with a different config ({changed}); resume with the same settings "
                f"(only {', '.join(RESUME_MAY_CHANGE)} may change) or use another --out folder"
            )
        if not (0 <= start_epoch and 0 <= start_step <= steps_per_epoch and len(history) == start_epoch):
            raise CheckpointError(f"{ckpt_path}: progress epoch {start_epoch}, step {start_step} does not fit this run")
        saved_digest = p.get("train_data_sha256")  # absent in checkpoints written before it was kept
        if saved_digest is not None and saved_digest != data_digest:
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
        _load_optimizer(opt, arrays, opt_meta)
        if _all_reduce([start_epoch, start_step], ctx, device, "max") != _all_reduce(
            [start_epoch, start_step], ctx, device, "min"
        ):
            raise ValueError(f"the ranks read different checkpoints from {ckpt_path}; --out must be shared")
        log(f"resumed from {ckpt_path} at epoch {start_epoch + 1}, step {start_step}")
        step_now = start_epoch * steps_per_epoch + start_step
        lr_was = _lr_at(saved, step_now, steps_per_epoch * saved.train.epochs)
        lr_now = _lr_at(cfg, step_now, total_steps)
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
        if ctx.is_main:  # a kill between the checkpoint's write and this file's would leave it a line short
            _write_metrics(out, history)
    elif resume:
        log(f"no checkpoint in {out}: starting from scratch")
    if start_epoch < cfg.train.epochs:
        sessions.append(
            {
                "versions": versions,
                "device": device_name(device),
                "processes": ctx.world_size,
                "from_epoch": start_epoch,
                "from_step": start_step,
            }
        )

    train_model: nn.Module = model
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        ddp = DistributedDataParallel(model, device_ids=ids)
        ddp.register_comm_hook(None, _allreduce_sum_hook)
        train_model = ddp

    t_start = time.perf_counter()
    penalty = _SilentPenalty(model) if cfg.train.silent_penalty > 0 else None
    target_penalty = _SilentPenalty(model, target_only=True) if cfg.train.target_penalty > 0 else None
    dropout = _SpikeDropout(model, cfg.train.spike_dropout) if cfg.train.spike_dropout > 0 else None

    def reduce_max(values: list[float]) -> list[float]:
        return _all_reduce(values, ctx, device, "max")

    # grad_*: the global L2 norm of each step's gradient (before any clipping): sum of logs, steps, largest;
    # silent: training samples with no output spike (counted in the forward pass that trained on them)
    new_epoch = {
        "seen": 0,
        "correct": 0,
        "silent": 0,
        "loss_sum": 0.0,
        "clipped": 0,
        "grad_log_sum": 0.0,
        "grad_steps": 0,
        "grad_max": 0.0,
        "train_s": 0.0,  # seconds spent in this epoch's steps (not its evaluation), summed across resumes
    }
    running = dict(new_epoch)  # this epoch's counters, kept across a resume

    def progress_state(epoch: int, step: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": step,
            "history": history,
            "running": dict(running),
            "wall_time_s": wall_before + time.perf_counter() - t_start,
            "world_size": ctx.world_size,
            "train_data_sha256": data_digest,
            "sessions": sessions,
        }

    last_saved = (start_epoch, start_step) if found else None

    def save(epoch: int, step: int) -> None:
        nonlocal last_saved
        if ctx.is_main:
            _save_training_checkpoint(ckpt_path, model, opt, cfg, progress_state(epoch, step), averaged)
        _barrier(ctx)  # nobody runs ahead of a checkpoint that is not on disk yet
        last_saved = (epoch, step)

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        order = epoch_order(cfg.train.seed, epoch, len(y_tr))
        first_step = start_step if epoch == start_epoch else 0
        bar = _progress_bar(len(y_tr), f"epoch {epoch + 1}/{cfg.train.epochs}", progress)
        if bar is not None and first_step:
            bar.update(min(first_step * cfg.train.batch_size, len(y_tr)))
        if epoch == start_epoch and resumed_running:
            running.update(resumed_running)
        else:
            running.update(new_epoch)
        t_epoch = time.perf_counter()
        seen_before = running["seen"]
        train_s_before = running["train_s"]
        # a checkpoint written before "train_s" was kept has not timed the steps it holds
        timed_all = not (epoch == start_epoch and resumed_running and "train_s" not in resumed_running)
        for step, idx in _batches(order, cfg.train.batch_size, first_step):
            n_global = len(idx)
            lo, hi = _shard(n_global, ctx)
            if cfg.data.augment:  # on the global batch: the random shifts belong to positions in it
                xb = _augment(x_tr[idx], cfg.train.seed, epoch, step, cfg.data.max_shift, cfg.data.flip)[lo:hi]
            else:
                xb = x_tr[idx[lo:hi]]
            xb, yb = xb.to(device), y_tr[idx[lo:hi]].to(device)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch * steps_per_epoch + step, total_steps)
            for pen in (penalty, target_penalty):
                if pen is not None:
                    pen.records.clear()  # drop what evaluation passes recorded
            if dropout is not None:
                dropout.reseed(cfg.train.seed, epoch, step, device, rows=(lo, hi, n_global))
            t_out = train_model(xb)
            # silent outputs at the latest output time of the global batch plus a margin, so each rank's share is exact
            t_filled = _fill_silent(t_out, cfg.train.silent_margin, reduce_max)
            loss_sum = spike_time_cross_entropy(t_filled, yb, tau=cfg.train.tau, reduction="sum")
            if penalty is not None:
                loss_sum = loss_sum + cfg.train.silent_penalty * penalty(reduce_max)
            if target_penalty is not None:
                loss_sum = loss_sum + cfg.train.target_penalty * target_penalty(reduce_max, yb)
            loss = loss_sum / n_global  # this rank's share of the global mean; DDP sums the shares' gradients
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # on the summed gradient: DDP has reduced it by now
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or math.inf))
            if not math.isfinite(norm):  # stop before the step: the weights and the last checkpoint stay good
                raise RuntimeError(
                    f"epoch {epoch + 1}, step {step + 1}: the gradient is not finite (norm {norm}); the weights were "
                    f"not updated, and {ckpt_path} holds the last checkpoint (resume from it with other settings, "
                    "e.g. a smaller train.lr or train.grad_clip)"
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
            step_loss, step_correct, step_silent = _all_reduce([float(loss_sum.detach()), correct, silent], ctx, device)
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
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": running["loss_sum"] / max(seen, 1),
            "train_accuracy": running["correct"] / max(seen, 1),
            "train_no_output_spike_fraction": running["silent"] / max(seen, 1),
            # over the epoch's every step, also where a resume ran none of them (it began at the epoch's end)
            "samples_per_s": (
                seen / max(running["train_s"], 1e-9) if timed_all else (seen - seen_before) / max(epoch_time, 1e-9)
            ),
            "lr_end": opt.param_groups[0]["lr"],
        }
        if cfg.train.grad_clip > 0:
            row["clipped_steps"] = running["clipped"]  # steps of this epoch whose gradient norm was cut
        if running["grad_steps"]:  # the typical step's gradient norm (geometric mean) and the largest
            row["grad_norm_geomean"] = math.exp(running["grad_log_sum"] / running["grad_steps"])
            row["grad_norm_max"] = running["grad_max"]
        elif seen:
            guard = cfg.train.silent_penalty + cfg.train.target_penalty
            log(_stuck_warning(epoch + 1, row["train_no_output_spike_fraction"], guard))
        for split in ("val", "test"):
            if split not in splits:
                continue
            ev = _evaluate(eval_model, *splits[split], cfg.train.eval_batch_size, device, ctx, cfg.train)
            row[f"{split}_accuracy"] = ev["accuracy"]
            row[f"{split}_loss"] = ev["loss"]
            row[f"{split}_no_output_spike_fraction"] = ev["no_output_spike_fraction"]
            if averaged is not None:  # the weights being trained, for comparison with their average
                raw = _evaluate(model, *splits[split], cfg.train.eval_batch_size, device, ctx, cfg.train)
                row[f"raw_{split}_accuracy"] = raw["accuracy"]
        history.append(row)
        save(epoch + 1, 0)
        if ctx.is_main:
            _write_metrics(out, history)
        log(
            f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  train {row['train_accuracy']:.4f}  "
            + "  ".join(f"{s} {row[f'{s}_accuracy']:.4f}" for s in ("val", "test") if f"{s}_accuracy" in row)
            + f"  {row['samples_per_s']:.0f} samples/s"
        )

    for hooks in (penalty, target_penalty, dropout):
        if hooks is not None:
            hooks.close()
    final = _evaluate(eval_model, *splits["test"], cfg.train.eval_batch_size, device, ctx, cfg.train)
    results = {
        "test_accuracy": final["accuracy"],
        "test_no_output_spike_fraction": final["no_output_spike_fraction"],
        "test_tied_decision_fraction": final["tied_decision_fraction"],
        "test_loss": final["loss"],
        "firing_rates": final["firing_rates"],
        "mean_decision_time": final["mean_decision_time"],
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "epochs": cfg.train.epochs,
        # a call that trained nothing (a finished run resumed) keeps the recorded time instead of adding its own
        "wall_time_s": wall_before + (time.perf_counter() - t_start if start_epoch < cfg.train.epochs else 0.0),
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
        _write_json(out / "results.json", results)
    _barrier(ctx)
    return results


def _quiet(_message: str) -> None:
    """The log of ranks other than 0."""
