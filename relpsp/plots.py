"""PNG figures of a training run (matplotlib, an optional extra, imported on use)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["plot_curves", "plot_output_histogram", "plot_raster", "plot_run", "raster_x_limit"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plots need matplotlib: pip install 'relpsp[cli]'") from e
    return plt


def _save(fig: Any, path: Path) -> None:
    """Render the PNG in memory and write it atomically: a crash never leaves a truncated figure."""
    from relpsp.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch. The training curve is the objective the optimizer saw (the
    cross-entropy plus any silent or target penalty); validation and test curves are the cross-entropy."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [r["epoch"] for r in history]
    style = {"marker": "o", "markersize": 3}  # a one-epoch run still shows its point
    ax1.plot(ep, [r["train_loss"] for r in history], label="train (objective)", **style)
    for split in ("val", "test"):
        if history and f"{split}_loss" in history[0]:
            ax1.plot(ep, [r.get(f"{split}_loss", math.nan) for r in history], label=split, **style)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy of softmax(-t / tau)")
    ax1.legend()
    ax2.plot(ep, [100 * r["train_accuracy"] for r in history], label="train", **style)
    for split in ("val", "test"):
        if history and f"{split}_accuracy" in history[0]:
            ax2.plot(ep, [100 * r.get(f"{split}_accuracy", math.nan) for r in history], label=split, **style)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):  # epochs are whole numbers: no ticks at 1.25, 1.5, ...
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_output_histogram(t_out: torch.Tensor, y: torch.Tensor, path: Path) -> Path:
    """Histogram of output spike times: the target neuron's against the others'."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    tgt = t_out.gather(1, y[:, None]).squeeze(1)
    mask = torch.ones_like(t_out, dtype=torch.bool)
    mask.scatter_(1, y[:, None], False)
    other = t_out[mask]
    finite = torch.cat([tgt[torch.isfinite(tgt)], other[torch.isfinite(other)]])
    if finite.numel():
        bins = torch.linspace(float(finite.min()), float(finite.max()) + 1e-6, 60).numpy()
        ax.hist(tgt[torch.isfinite(tgt)].numpy(), bins=bins, alpha=0.7, label="target class")
        ax.hist(other[torch.isfinite(other)].numpy(), bins=bins, alpha=0.5, label="other classes")
    silent = float((~torch.isfinite(t_out)).float().mean())
    ax.set_title(f"output spike times ({100 * silent:.1f}% of output neurons silent)")
    ax.set_xlabel("spike time")
    ax.set_ylabel("count")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def raster_x_limit(layer_times: list[torch.Tensor]) -> tuple[float | None, int]:
    """The raster's right edge and how many spikes lie beyond it (None: matplotlib's own, for 10 spikes or
    fewer). A few neurons whose summed weight barely exceeds 0 fire very late, so the axis keeps to the
    bulk (1.2 x the 98th percentile), but it always shows the output layer's spikes (the decisions), which
    the bulk of input and hidden spikes can leave beyond the cut: a windowed network's outputs fire in
    the last window."""
    finite = torch.cat([t.reshape(-1)[torch.isfinite(t.reshape(-1))] for t in layer_times])
    if finite.numel() <= 10:
        return None, 0
    x_hi = float(torch.quantile(finite.double(), 0.98)) * 1.2 + 1e-9
    out = layer_times[-1].reshape(-1)
    out = out[torch.isfinite(out)]
    if out.numel():
        x_hi = max(x_hi, float(out.max()) * 1.05 + 1e-9)
    return x_hi, int((finite > x_hi).sum())


def plot_raster(layer_times: list[torch.Tensor], names: list[str], path: Path, title: str = "") -> Path:
    """Spike raster of one sample: one row per neuron, stacked layer by layer, one colour per layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    offset = 0
    for k, (t, name) in enumerate(zip(layer_times, names)):
        flat = t.reshape(-1)
        idx = torch.nonzero(torch.isfinite(flat)).squeeze(1)
        ax.scatter(
            flat[idx].numpy(),
            (idx + offset).numpy(),
            s=2,
            color=f"C{k % 10}",
            label=f"{name} ({len(idx)}/{flat.numel()})",
        )
        offset += flat.numel()
    x_hi, late = raster_x_limit(layer_times)
    if x_hi is not None:
        ax.set_xlim(-0.02 * x_hi, x_hi)
        if late:
            title = (
                f"{title}\n({late} later spikes beyond the axis)" if title else f"{late} later spikes beyond the axis"
            )
    ax.set_xlabel("spike time")
    ax.set_ylabel("neuron (layers stacked)")
    ax.set_title(title, fontsize=10)
    ax.legend(markerscale=4, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the points
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_run(
    run_dir: str | os.PathLike,
    sample: int = 0,
    data_dir: str | None = None,
    out_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write ``curves.png``, ``output_times.png`` and ``raster.png`` into ``out_dir`` (default ``run_dir``);
    return their paths. A run folder without a checkpoint (such as the committed ``docs/results/*``
    folders) gives ``curves.png`` alone, which needs only ``metrics.jsonl``."""
    from relpsp.data import load_dataset
    from relpsp.models import layer_outputs
    from relpsp.train import CHECKPOINT_NAME, data_options, load_trained
    from relpsp.train.run_folder import read_metrics

    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run
    metrics = run / "metrics.jsonl"
    if not metrics.is_file() and not (run / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"{metrics} not found: is {run} a folder written by `relpsp train`?")
    # a run stopped in its first epoch (train.checkpoint_every) has a checkpoint and no finished epoch yet
    history = read_metrics(metrics) if metrics.is_file() else []
    out.mkdir(parents=True, exist_ok=True)
    if not (run / CHECKPOINT_NAME).exists():
        return [plot_curves(history, out / "curves.png")]
    model, cfg, _ = load_trained(run / CHECKPOINT_NAME)
    x, y = load_dataset(cfg.data.dataset, "test", data_dir or cfg.data.data_dir, **data_options(cfg))
    if not 0 <= sample < len(y):  # before any figure is written: all three come from one call or none
        raise ValueError(f"--sample must be in [0, {len(y) - 1}]")
    paths = [plot_curves(history, out / "curves.png")]
    n = min(len(y), 2000)
    with torch.no_grad():
        t_out = torch.cat([model(x[s : s + 500]) for s in range(0, n, 500)])
        paths.append(plot_output_histogram(t_out, y[:n], out / "output_times.png"))
        outs = layer_outputs(model, x[sample : sample + 1])
    keep = [(o[0], type(m).__name__) for o, m in zip(outs, model) if type(m).__name__ != "Flatten"]
    names = [f"{k}:{n}" for k, (_, n) in enumerate(keep)]
    pred = int(outs[-1][0].argmin()) if bool(torch.isfinite(outs[-1]).any()) else -1
    title = f"{cfg.data.dataset} test sample {sample}: label {int(y[sample])}, decision {pred}"
    paths.append(plot_raster([t for t, _ in keep], names, out / "raster.png", title))
    return paths
