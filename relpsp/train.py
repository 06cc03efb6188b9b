"""Training, evaluation, checkpoints and resume.

``fit(cfg, out_dir)`` trains ``cfg.model`` on ``cfg.data`` and writes into ``out_dir``:

- ``checkpoint.ckpt``: weights, optimizer state and progress (``relpsp.checkpoint`` format: no pickle,
  atomic), written every ``checkpoint_every`` steps and at the end of every epoch;
- ``metrics.jsonl``: one JSON line per finished epoch (rewritten atomically from the history kept in
  the checkpoint, so a crash never leaves a line without its checkpoint or the reverse);
- ``results.json``: final test accuracy, resolved config, versions, device, wall time, per-layer
  firing rates and the fraction of samples with no output spike.

Determinism: the weights come from ``seed``; the sample order of epoch ``e`` is a permutation drawn from
a generator seeded with ``(seed, e)``; the learning rate is a pure function of the step. A run resumed
from any checkpoint therefore replays exactly the steps an uninterrupted run would take (on CPU, with
the same thread count).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from relpsp import __version__
from relpsp.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from relpsp.config import Config, config_from_dict, config_to_dict
from relpsp.functional import first_spike_decode, spike_time_cross_entropy
from relpsp.kernels import set_cpu_kernel_threads
from relpsp.models import layer_outputs, load_model_arrays, model_arrays, model_from_config

__all__ = [
    "CHECKPOINT_NAME",
    "data_options",
    "evaluate",
    "fit",
    "load_trained",
    "make_optimizer",
    "set_threads",
]

CHECKPOINT_NAME = "checkpoint.ckpt"


def set_threads(threads: int) -> None:
    """Give the cores to the compiled kernels. torch and numba each bring their own OpenMP pool; when both
    run several threads they fight for the cores (we measured training 5x slower), so torch, which only does
    small elementwise work here, gets one thread and numba gets ``threads`` (0: all cores)."""
    n = threads or os.cpu_count() or 1
    if set_cpu_kernel_threads(n):
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(n)


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
    if t.checkpoint_every < 0 or t.weight_decay < 0 or t.threads < 0:
        raise ValueError("train.checkpoint_every, weight_decay and threads must be >= 0")
    if t.device != "cpu" and not t.device.startswith("cuda"):
        raise ValueError(f"train.device must be 'cpu' or 'cuda[:N]', got {t.device!r}")
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but torch sees no CUDA device")
    if cfg.data.val_size < 0:
        raise ValueError("data.val_size must be >= 0")


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
    return splits


def _check_splits(cfg: Config, splits: dict[str, tuple[Tensor, Tensor]]) -> None:
    for name, (x, y) in splits.items():
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"{name} split has {len(x)} inputs and {len(y)} labels; need as many, and at least one")
        if tuple(x.shape[1:]) != tuple(cfg.model.input_shape):
            raise ValueError(
                f"dataset {cfg.data.dataset!r} has inputs of shape {tuple(x.shape[1:])} but model.input_shape is "
                f"{tuple(cfg.model.input_shape)}; set model.input_shape (e.g. --set model.input_shape=[1,28,28])"
            )


def data_options(cfg: Config) -> dict[str, Any]:
    """Loader options implied by the data config (see ``relpsp.data.load_dataset``)."""
    from relpsp.data import canonical_name

    name = canonical_name(cfg.data.dataset)
    opts: dict[str, Any] = {}
    if name == "yinyang" and cfg.data.bias_input >= 0:
        opts["bias"] = cfg.data.bias_input
    if name == "caltech-face-motorbike" and cfg.data.image_size:
        opts["image_size"] = tuple(cfg.data.image_size)
    return opts


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _augment(x: Tensor, seed: int, epoch: int, step: int) -> Tensor:
    """Random shifts of up to 2 pixels (images only), drawn from a generator seeded by the step."""
    if x.dim() != 4:
        return x
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + step)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    out = torch.zeros_like(x)
    h, w = x.shape[2], x.shape[3]
    out[:, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# ---------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(model: nn.Sequential, x: Tensor, y: Tensor, batch_size: int = 1000, device: str = "cpu") -> dict[str, Any]:
    """Accuracy (no output spike counts as wrong), no-spike fraction, loss, firing rate of every layer
    (fraction of neurons that spike, averaged over samples) and mean output spike time of the winner."""
    model.eval()
    correct = 0
    silent = 0
    loss_sum = 0.0
    rates: list[float] | None = None
    t_win: list[float] = []
    for s in range(0, len(y), batch_size):
        xb, yb = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
        outs = layer_outputs(model, xb)
        t_out = outs[-1]
        pred, fired = first_spike_decode(t_out)
        correct += int((pred == yb).sum())
        silent += int((~fired).sum())
        loss_sum += float(spike_time_cross_entropy(t_out, yb, reduction="sum"))
        r = [float(torch.isfinite(o).float().mean()) * len(yb) for o in outs]
        rates = r if rates is None else [a + b for a, b in zip(rates, r)]
        if bool(fired.any()):
            t_win.append(float(t_out.min(1).values[fired].sum()))
    n = max(len(y), 1)
    return {
        "accuracy": correct / n,
        "no_output_spike_fraction": silent / n,
        "loss": loss_sum / n,
        "firing_rates": [r / n for r in (rates or [])],
        "mean_decision_time": sum(t_win) / max(n - silent, 1),
        "n": len(y),
    }


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
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for pid_s, sc in meta["scalars"].items():
        state[int(pid_s)] = {k: torch.tensor(v, dtype=torch.float32) for k, v in sc.items()}
    for name, a in arrays.items():
        if name.startswith("optim."):
            _, pid_s, k = name.split(".", 2)
            state.setdefault(int(pid_s), {})[k] = torch.from_numpy(np.array(a))
    sd["state"] = state
    sd["param_groups"] = meta["param_groups"]
    opt.load_state_dict(sd)


def _save_training_checkpoint(path: Path, model, opt, cfg: Config, progress: dict[str, Any]) -> None:
    arrays = model_arrays(model)
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


class _SilentPenalty:
    """Sums ``silent_neuron_penalty`` over the spiking layers of one forward pass, read through forward
    hooks (the modules stay stateless). ``t_end`` of a layer: the latest spike it fired in the batch
    (capped by its cut-off), so silent neurons are pushed to fire within the range the others use."""

    def __init__(self, model: nn.Sequential) -> None:
        from relpsp.nn import SpikingConv2d, SpikingLinear

        self.records: list[tuple[nn.Module, Tensor, Tensor]] = []
        self.handles = [
            m.register_forward_hook(lambda mod, inp, out: self.records.append((mod, inp[0], out)))
            for m in model
            if isinstance(m, (SpikingLinear, SpikingConv2d))
        ]

    def __call__(self) -> Tensor:
        from relpsp.functional import silent_neuron_penalty

        total = torch.zeros(())
        for mod, t_in, t_out in self.records:
            with torch.no_grad():
                finite_out = t_out[torch.isfinite(t_out)]
                finite_in = t_in[torch.isfinite(t_in)]
                if finite_out.numel():
                    t_end = min(float(finite_out.max()), mod.t_max)
                elif finite_in.numel():
                    t_end = min(float(finite_in.max()) + 1.0, mod.t_max)
                else:
                    continue
            kw = {"stride": mod.stride, "padding": mod.padding} if t_in.dim() == 4 else {}
            total = total + silent_neuron_penalty(t_in, mod.weight, t_out, t_end=t_end, theta=mod.theta, **kw)
        self.records.clear()
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()


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
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        if commit:
            v["commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def fit(
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    splits: dict[str, tuple[Tensor, Tensor]] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, checkpoint, evaluate; return the results dict (also written to ``out_dir/results.json``).

    ``splits`` overrides the dataset (tests use it); ``on_step(epoch, step)`` is called after each
    optimizer step (tests use it to interrupt a run).
    """
    _validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    device = cfg.train.device
    if device == "cpu":
        set_threads(cfg.train.threads)
    splits = splits if splits is not None else load_splits(cfg)
    _check_splits(cfg, splits)
    x_tr, y_tr = splits["train"]

    torch.manual_seed(cfg.train.seed)
    model = model_from_config(cfg.model, backend=cfg.train.backend).to(device)
    opt = make_optimizer(cfg, model.parameters())
    steps_per_epoch = math.ceil(len(y_tr) / cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    start_epoch, start_step, history, wall_before = 0, 0, [], 0.0
    resumed_running: dict[str, Any] | None = None

    if resume and ckpt_path.exists():
        arrays, meta = load_checkpoint(ckpt_path)
        saved = config_from_dict(meta["config"])
        if replace(saved, train=replace(saved.train, epochs=cfg.train.epochs, device=cfg.train.device)) != replace(
            cfg, train=replace(cfg.train, epochs=cfg.train.epochs, device=cfg.train.device)
        ):
            raise ValueError(
                f"{ckpt_path} was written with a different config; resume with the same settings "
                "(only --epochs and --device may change) or use another --out folder"
            )
        load_model_arrays(model, arrays)
        _load_optimizer(opt, arrays, meta["optimizer"])
        p = meta["progress"]
        start_epoch, start_step, history = p["epoch"], p["step"], p["history"]
        resumed_running = p.get("running") if start_step else None
        wall_before = p.get("wall_time_s", 0.0)
        log(f"resumed from {ckpt_path} at epoch {start_epoch + 1}, step {start_step}")
    elif resume:
        log(f"no checkpoint in {out}: starting from scratch")

    t_start = time.perf_counter()
    penalty = _SilentPenalty(model) if cfg.train.silent_penalty > 0 else None

    running = {"seen": 0, "correct": 0, "loss_sum": 0.0}  # this epoch's counters, kept across a resume

    def progress_state(epoch: int, step: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": step,
            "history": history,
            "running": dict(running),
            "wall_time_s": wall_before + time.perf_counter() - t_start,
        }

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
            running.update(seen=0, correct=0, loss_sum=0.0)
        t_epoch = time.perf_counter()
        seen_before = running["seen"]
        for step, idx in _batches(order, cfg.train.batch_size, first_step):
            xb, yb = x_tr[idx], y_tr[idx]
            if cfg.data.augment:
                xb = _augment(xb, cfg.train.seed, epoch, step)
            xb, yb = xb.to(device), yb.to(device)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch * steps_per_epoch + step, total_steps)
            if penalty is not None:
                penalty.records.clear()  # drop what evaluation passes recorded
            t_out = model(xb)
            loss = spike_time_cross_entropy(t_out, yb, silent_margin=cfg.train.silent_margin)
            if penalty is not None:
                loss = loss + cfg.train.silent_penalty * penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                pred, _ = first_spike_decode(t_out)
                running["correct"] += int((pred == yb).sum())
            running["seen"] += len(yb)
            running["loss_sum"] += float(loss.detach()) * len(yb)
            if bar is not None:
                bar.update(len(yb))
                rate = (running["seen"] - seen_before) / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(
                    loss=f"{running['loss_sum'] / running['seen']:.4f}",
                    acc=f"{running['correct'] / running['seen']:.4f}",
                    sps=f"{rate:.0f}",
                )
            if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
                _save_training_checkpoint(ckpt_path, model, opt, cfg, progress_state(epoch, step + 1))
            if on_step is not None:
                on_step(epoch, step)
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - t_epoch
        seen = running["seen"]
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": running["loss_sum"] / max(seen, 1),
            "train_accuracy": running["correct"] / max(seen, 1),
            "samples_per_s": (seen - seen_before) / max(epoch_time, 1e-9),
            "lr_end": opt.param_groups[0]["lr"],
        }
        for split in ("val", "test"):
            if split in splits:
                ev = evaluate(model, *splits[split], cfg.train.eval_batch_size, device)
                row[f"{split}_accuracy"] = ev["accuracy"]
                row[f"{split}_loss"] = ev["loss"]
                row[f"{split}_no_output_spike_fraction"] = ev["no_output_spike_fraction"]
        history.append(row)
        _save_training_checkpoint(ckpt_path, model, opt, cfg, progress_state(epoch + 1, 0))
        atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode())
        log(
            f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  train {row['train_accuracy']:.4f}  "
            + "  ".join(f"{s} {row[f'{s}_accuracy']:.4f}" for s in ("val", "test") if f"{s}_accuracy" in row)
            + f"  {row['samples_per_s']:.0f} samples/s"
        )

    if penalty is not None:
        penalty.close()
    final = evaluate(model, *splits["test"], cfg.train.eval_batch_size, device)
    results = {
        "test_accuracy": final["accuracy"],
        "test_no_output_spike_fraction": final["no_output_spike_fraction"],
        "test_loss": final["loss"],
        "firing_rates": final["firing_rates"],
        "mean_decision_time": final["mean_decision_time"],
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "epochs": cfg.train.epochs,
        "wall_time_s": wall_before + time.perf_counter() - t_start,
        "train_samples_per_s_mean": float(np.mean([r["samples_per_s"] for r in history])) if history else None,
        "config": config_to_dict(cfg),
        "versions": _versions(),
        "device": _device_name(device),
        "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "history": history,
    }
    _write_json(out / "results.json", results)
    return results
