"""Where the windowed neuron's spikes fall at initialisation, layer by layer (relpsp.window).

For each setting it builds the network, runs one batch of test images and prints, per spiking layer, the
fraction of neurons held at the window's start (s) and end (e), and the signal: the spread of each
neuron's spike time across the images, averaged over neurons. A deep windowed network trains only if
few neurons are held (held neurons pass no gradient) and the signal does not vanish with depth.

    python scripts/window_init.py --arch 16C5-P2-32C5-P2-800-128-10 0.5,0.2 0.5,1.5 0.5,1.5,c
    (each setting is init_mean,init_std, with ",c" for centred rows, model.init_centered)
"""

from __future__ import annotations

import os

# relpsp sets this when it is imported before torch; these scripts import torch first (docs/PERFORMANCE.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse

import torch

from relpsp.data import load_dataset
from relpsp.models import build_model


def layer_stats(model: torch.nn.Sequential, x: torch.Tensor) -> list[tuple[float, float, float]]:
    """``(held at start, held at end, signal)`` of every windowed layer."""
    stats = []
    h = x
    with torch.no_grad():
        for m in model:
            h = m(h)
            if hasattr(m, "t_start"):
                tol = 1e-6 * max(1.0, abs(m.t_end))
                at_s = float((h <= m.t_start + tol).float().mean())
                at_e = float((h >= m.t_end - tol).float().mean())
                stats.append((at_s, at_e, float(h.flatten(1).std(0).mean())))
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", nargs="+", help="init_mean,init_std[,c]")
    p.add_argument("--arch", default="16C5-P2-32C5-P2-800-128-10")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x, _ = load_dataset(args.dataset, "test")
    x = x[: args.images]
    print(f"{args.arch} on {args.images} {args.dataset} test images, window {args.window}")
    print("per windowed layer: held at start / held at end / signal (mean spread of a neuron's time across images)")
    for setting in args.settings:
        parts = setting.split(",")
        mean, std, centered = float(parts[0]), float(parts[1]), parts[2:] == ["c"]
        torch.manual_seed(args.seed)
        model = build_model(
            args.arch,
            tuple(x.shape[1:]),
            kernel="window",
            window=args.window,
            init_mean=mean,
            init_std=std,
            init_centered=centered,
        )
        cells = [f"{s:.2f} / {e:.2f} / {sig:.3f}" for s, e, sig in layer_stats(model, x)]
        print(f"mean {mean:g} std {std:g}{' centred' if centered else ''}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
