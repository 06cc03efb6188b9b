"""Depth study: ReL-PSP against a decaying alpha-kernel neuron in ever deeper MLPs (the paper's argument).

For each kernel and depth it trains ``784-W-...-W-10`` (``depth`` hidden layers of width ``W``) with the
library's training loop, and measures on a fixed batch of training images, at initialisation and after
training, per spiking layer:

- the silent fraction (sample, neuron pairs with no spike) and the dead fraction (neurons silent for every
  sample of the batch: they get no gradient at all);
- the mean absolute weight gradient of the loss;
- the slope of the potential at the crossing (``W_j`` for ReL-PSP, ``V'(t_j)`` for alpha): its median and
  the fraction below 0.05, where ``1 / slope`` (the factor in every spike-time gradient) exceeds 20.

Writes ``OUT/depth_study.json`` (plus one training run folder per network) and, with ``--plot``, figures
under ``docs/figures/``. The committed studies (docs/DEPTH.md; a few minutes each on 2 CPU cores)::

    python scripts/depth_study.py --out docs/results/depth
    python scripts/depth_study.py --out docs/results/depth_alpha_tuned --kernels alpha --alpha-init-mean 10 --kernel-tau 3
    python scripts/depth_study.py --out docs/results/depth_alpha_lr1e-4 --kernels alpha --alpha-init-mean 10 --kernel-tau 3 --lr 1e-4
    python scripts/depth_study.py --out docs/results/depth --plot-only --also docs/results/depth_alpha_tuned docs/results/depth_alpha_lr1e-4

The two tuning sweeps behind the alpha settings are listed in docs/DEPTH.md.
"""

from __future__ import annotations

import os

# relpsp sets this when it is imported before torch; these scripts import torch first (docs/PERFORMANCE.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from relpsp._fileio import json_text
from relpsp.alpha import alpha_linear
from relpsp.autograd import RelpspLinearFn, resolve_backend
from relpsp.checkpoint import atomic_write_bytes
from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig
from relpsp.core.dense import W_SUM_MIN
from relpsp.functional import spike_time_cross_entropy
from relpsp.models import model_from_config
from relpsp.nn import AlphaSpikingLinear, SpikingLinear
from relpsp.train import CHECKPOINT_NAME, fit, load_splits, load_trained, set_threads

SMALL_SLOPE = 0.05


def make_config(kernel: str, depth: int, args: argparse.Namespace) -> Config:
    arch = "-".join(["784"] + [str(args.width)] * depth + ["10"])
    init_mean = args.alpha_init_mean if kernel == "alpha" else args.init_mean
    kernel_tau = args.kernel_tau if kernel == "alpha" else ModelConfig().kernel_tau  # the alpha kernel's only
    return Config(
        model=ModelConfig(
            arch=arch, input_shape=(1, 28, 28), kernel=kernel, kernel_tau=kernel_tau, init_mean=init_mean
        ),
        data=DataConfig(dataset=args.dataset, train_size=args.train_size),
        train=TrainConfig(epochs=args.epochs, batch_size=256, lr=args.lr, tau=args.loss_tau, seed=args.seed),
    )


def _slope(mod: torch.nn.Module, t_in: Tensor, t_out: Tensor) -> Tensor:
    """Slope of the potential at each crossing, NaN where the neuron is silent."""
    with torch.no_grad():
        if isinstance(mod, AlphaSpikingLinear):
            _, s = alpha_linear(t_in.double(), mod.weight.double(), theta=mod.theta, tau=mod.tau, return_slope=True)
        else:  # ReL-PSP: W_j, the summed weight of the causal inputs, as the forward op reports it
            backend = resolve_backend(mod.backend, t_in)
            _, s = RelpspLinearFn.apply(t_in, mod.weight, mod.theta, mod.t_max, W_SUM_MIN, backend)
        return torch.where(torch.isfinite(t_out), s.to(t_out.dtype), torch.full_like(t_out, math.nan))


def diagnose(model: torch.nn.Sequential, x: Tensor, y: Tensor, loss_tau: float) -> dict[str, Any]:
    """Per spiking layer: silent and dead fractions, mean |dL/dW|, slope statistics; plus loss and accuracy."""
    model.zero_grad()
    h = x
    records = []
    for mod in model:
        t_in = h
        h = mod(h)
        if isinstance(mod, (SpikingLinear, AlphaSpikingLinear)):
            h.retain_grad()
            records.append((mod, t_in.detach(), h))
    loss = spike_time_cross_entropy(h, y, tau=loss_tau)
    loss.backward()
    layers = []
    for mod, t_in, t_out in records:
        fired = torch.isfinite(t_out.detach())
        slope = _slope(mod, t_in, t_out.detach())
        s = slope[fired]
        layers.append(
            {
                "silent_fraction": float((~fired).float().mean()),
                "dead_fraction": float((~fired.any(0)).float().mean()),
                "mean_abs_weight_grad": float(mod.weight.grad.abs().mean()) if mod.weight.grad is not None else 0.0,
                "slope_median": float(s.median()) if s.numel() else math.nan,
                "small_slope_fraction": float((s < SMALL_SLOPE).float().mean()) if s.numel() else math.nan,
            }
        )
    t_out = h.detach()
    pred = torch.where(torch.isfinite(t_out).any(1), t_out.argmin(1), torch.full_like(y, -1))
    return {"loss": float(loss.detach()), "accuracy": float((pred == y).float().mean()), "layers": layers}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    runs = []
    # Every network of a study trains on the same data (same dataset, subset size and seed): load it once.
    splits = load_splits(make_config(args.kernels[0], args.depths[0], args))
    x_tr, y_tr = splits["train"]
    probe = (x_tr[: args.probe_size], y_tr[: args.probe_size])
    for kernel in args.kernels:
        for depth in args.depths:
            cfg = make_config(kernel, depth, args)
            torch.manual_seed(cfg.train.seed)  # fit draws the same initial weights from this seed
            init_model = model_from_config(cfg.model)
            at_init = diagnose(init_model, *probe, cfg.train.tau)
            run_dir = out / f"{kernel}-d{depth}-seed{cfg.train.seed}"
            print(f"[depth study] {kernel} {cfg.model.arch}", flush=True)
            res = fit(cfg, run_dir, resume=True, progress=args.progress, splits=splits)
            trained, _, _ = load_trained(run_dir / CHECKPOINT_NAME)
            after = diagnose(trained, *probe, cfg.train.tau)
            runs.append(
                {
                    "kernel": kernel,
                    "depth": depth,
                    "arch": cfg.model.arch,
                    "test_accuracy": res["test_accuracy"],
                    "no_output_spike_fraction": res.get("test_no_output_spike_fraction"),
                    # training time as fit records it (a re-run that only re-evaluates keeps it)
                    "wall_time_s": res["wall_time_s"],
                    "init": at_init,
                    "trained": after,
                }
            )
            print(f"[depth study] {kernel} depth {depth}: test accuracy {100 * res['test_accuracy']:.2f}%", flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plot", "progress")}
    payload = {"settings": settings, "small_slope": SMALL_SLOPE, "runs": runs}
    atomic_write_bytes(out / "depth_study.json", (json_text(payload) + "\n").encode())
    return payload


def _label(kernel: str, settings: dict[str, Any], tuned: bool) -> str:
    if kernel == "relpsp":
        return "ReL-PSP"
    if not tuned:
        return "alpha kernel, same settings"
    lr = f", lr {settings['lr']:g}" if settings.get("lr", 1e-3) != 1e-3 else ""
    return f"alpha kernel, init {settings['alpha_init_mean']:g}, tau {settings['kernel_tau']:g}{lr}"


def series_of(payloads: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(label, runs sorted by depth)`` per kernel of each study; studies after the first are alpha variants."""
    out = []
    for n, payload in enumerate(payloads):
        kernels = sorted({r["kernel"] for r in payload["runs"]}, key=lambda k: k != "relpsp")
        for k in kernels:
            runs = sorted((r for r in payload["runs"] if r["kernel"] == k), key=lambda r: r["depth"])
            out.append((_label(k, payload["settings"], tuned=n > 0), runs))
    return out


def table(payloads: list[dict[str, Any]]) -> str:
    """Markdown table: test accuracy (%) per series and depth, then the no-output-spike fraction."""
    series = series_of(payloads)
    depths = sorted({r["depth"] for _, runs in series for r in runs})
    lines = ["| network | " + " | ".join(f"{d} hidden" for d in depths) + " |", "|---" * (len(depths) + 1) + "|"]
    for label, runs in series:
        by_depth = {r["depth"]: r for r in runs}
        cells = [f"{100 * by_depth[d]['test_accuracy']:.2f}" if d in by_depth else "" for d in depths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(payloads: list[dict[str, Any]], fig_dir: Path) -> list[Path]:
    """``depth_accuracy.png`` (accuracy against depth) and ``depth_layers.png`` (per-layer metrics of the
    deepest network, at initialisation and after training) for the studies in ``payloads``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    first = payloads[0]["settings"]
    width = first.get("width", 100)
    if any(
        p["settings"].get(k) != first.get(k) for p in payloads for k in ("width", "dataset", "train_size", "epochs")
    ):
        raise ValueError("the studies to plot together differ in width, dataset, training size or epochs")
    series = series_of(payloads)
    colors = ["C0", "C3", "C1", "C2", "C4"]
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (label, runs), c in zip(series, colors):
        ax.plot([r["depth"] for r in runs], [100 * r["test_accuracy"] for r in runs], "o-", color=c, label=label)
    ax.set_xlabel(f"hidden layers ({width} neurons each)")
    ax.set_ylabel("test accuracy (%)")
    size = f"{first['train_size'] // 1000}k" if first.get("train_size") else "all"
    ax.set_title(f"{first.get('dataset', 'mnist')} ({size} training images, {first.get('epochs')} epochs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(fig_dir / "depth_accuracy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    all_depths = sorted({r["depth"] for _, runs in series for r in runs})
    for depth in sorted({d for d in (4, all_depths[-1]) if d in all_depths}):
        paths.append(_plot_layers(plt, series, colors, depth, width, fig_dir / f"depth_layers_d{depth}.png"))
    return paths


def _plot_layers(plt: Any, series: list, colors: list[str], depth: int, width: int, path: Path) -> Path:
    metrics = [
        ("dead_fraction", "dead neurons (fraction)", False),
        ("mean_abs_weight_grad", "mean |dL/dW| (0 not drawn)", True),
        ("small_slope_fraction", f"crossings with slope < {SMALL_SLOPE}", False),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for row, phase in enumerate(("init", "trained")):
        for col, (key, title, log) in enumerate(metrics):
            ax = axes[row, col]
            for (label, runs), c in zip(series, colors):
                r = next((r for r in runs if r["depth"] == depth), None)
                if r is None:
                    continue
                # null in the file: a layer with no crossing to measure (NaN when the study ran)
                vals = [math.nan if layer[key] is None else layer[key] for layer in r[phase]["layers"]]
                if log:
                    vals = [v if v > 0 else math.nan for v in vals]
                ax.plot(range(1, len(vals) + 1), vals, "o-", color=c, label=label)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("spiking layer (last = output)")
            ax.set_title(f"{title}, {'at initialisation' if phase == 'init' else 'after training'}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"Per layer, {depth} hidden layers of {width} neurons")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/depth")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--kernels", nargs="+", default=["relpsp", "alpha"], choices=["relpsp", "alpha"])
    p.add_argument("--depths", nargs="+", type=int, default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-mean", type=float, default=5.0)
    p.add_argument("--alpha-init-mean", type=float, default=5.0)
    p.add_argument("--kernel-tau", type=float, default=1.0)
    p.add_argument("--loss-tau", type=float, default=0.1)
    p.add_argument("--probe-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--plot", action="store_true", help="write docs/figures/depth_*.png")
    p.add_argument("--plot-only", action="store_true", help="only redraw the figures from OUT/depth_study.json")
    p.add_argument(
        "--also", nargs="*", default=[], metavar="DIR", help="add the alpha runs of other studies to the plots"
    )
    args = p.parse_args(argv)
    if args.plot_only:
        payload = json.loads((Path(args.out) / "depth_study.json").read_text())
    else:
        payload = run(args)
    if args.plot or args.plot_only:
        others = [json.loads((Path(d) / "depth_study.json").read_text()) for d in args.also]
        for path in plot([payload, *others], Path("docs/figures")):
            print(f"wrote {path}")
        print(table([payload, *others]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
