"""How late the spikes of a trained network's dense layers fall, and how small their summed causal weights.

The exact spike-time gradient of a ReL-PSP neuron is dt_j/dw_ji = (t_i - t_j) / W_j, with W_j the sum of
the weights of the inputs that fired before t_j (taken here from the exact forward,
``relpsp.core.dense.relpsp_linear_fwd_torch``, the W_j that training's backward divides by). A neuron that only just reaches threshold has a small W_j
and fires late, so its gradient is large twice over. For each spiking dense layer of a checkpoint this
prints, on the first ``--images`` training images (no augmentation), the fraction of (image, neuron)
pairs that fire, quantiles of W_j over those that fire (interpolated), and the median (the lower middle
value) and largest spike time; then the median and largest time of the correct output and of the
earliest wrong one. Used for the Caltech collapse in docs/RESULTS.md:

    python scripts/spike_lateness.py runs/cal4_ep9.ckpt runs/cal4_ep10.ckpt
"""

from __future__ import annotations

import os

# relpsp sets this when it is imported before torch; these scripts import torch first (docs/PERFORMANCE.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from typing import Any

import numpy as np
import torch
from torch import Tensor

from relpsp.core.dense import relpsp_linear_fwd_torch
from relpsp.models import layer_outputs
from relpsp.nn import SpikingLinear

QUANTILES = (0.0, 0.001, 0.01, 0.5)


def dense_layer_stats(model: torch.nn.Sequential, x: Tensor) -> list[dict[str, Any]]:
    """One dict per ``SpikingLinear`` layer: ``shape``, ``fired``, ``w_sum_quantiles``, ``t_median``, ``t_max``."""
    stats = []
    with torch.no_grad():
        outs = layer_outputs(model, x)
        for i, m in enumerate(model):
            if not isinstance(m, SpikingLinear):
                continue
            t_in = (outs[i - 1] if i else x).flatten(1)
            t = outs[i]  # the times the network's own forward gave; W_j from the reference forward
            w_sum = relpsp_linear_fwd_torch(t_in, m.weight, m.theta, m.t_max)[1]
            fired = torch.isfinite(t)
            row: dict[str, Any] = {"shape": tuple(m.weight.shape), "fired": float(fired.double().mean())}
            if fired.any():
                # numpy: torch.quantile refuses more than 2**24 values (some 21,000 MNIST images here)
                q = np.quantile(w_sum[fired].double().numpy(), QUANTILES)
                row |= {"w_sum_quantiles": [float(v) for v in q], "t_median": float(t[fired].median())}
                row["t_max"] = float(t[fired].max())
            else:
                row |= {"w_sum_quantiles": None, "t_median": float("inf"), "t_max": float("inf")}
            stats.append(row)
    return stats


def output_times(t_out: Tensor, y: Tensor) -> dict[str, float]:
    """Median and largest time of the correct output and of the earliest wrong one (``inf``: silent)."""
    right = t_out[torch.arange(len(y)), y]
    others = t_out.clone()
    others[torch.arange(len(y)), y] = float("inf")
    wrong = others.min(dim=1).values
    return {
        "right_median": float(right.median()),
        "right_max": float(right.max()),
        "wrong_median": float(wrong.median()),
        "wrong_max": float(wrong.max()),
    }


def main() -> None:
    from relpsp.train import load_splits, load_trained

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--images", type=int, default=1000, help="the first N training images (default 1000)")
    args = p.parse_args()
    if args.images < 1:
        p.error("--images must be >= 1")
    for path in args.checkpoints:
        model, cfg, meta = load_trained(path)
        x, y = (a[: args.images] for a in load_splits(cfg)["train"])
        print(f"{path} (after epoch {meta['progress']['epoch']}), {len(y)} training images")
        for s in dense_layer_stats(model, x):
            q = s["w_sum_quantiles"]
            qs = "none fired" if q is None else " / ".join(f"{v:.4g}" for v in q)
            print(
                f"  dense {s['shape']}: fired {s['fired']:.3f}; W_j min / 0.1% / 1% / median {qs}; "
                f"t median {s['t_median']:.4g}, max {s['t_max']:.6g}"
            )
        with torch.no_grad():
            o = output_times(model(x), y)
        print(
            f"  output: correct median {o['right_median']:.4g}, max {o['right_max']:.6g}; "
            f"earliest wrong median {o['wrong_median']:.4g}, max {o['wrong_max']:.6g}"
        )


if __name__ == "__main__":
    main()
