"""Causal weight sums W_j of a trained ReL-PSP network: how close to zero they come.

A ReL-PSP neuron that fires at t_j = (theta + sum_{i in C_j} w_ji t_i) / W_j, W_j = sum_{i in C_j} w_ji
(C_j: its inputs that spiked before t_j), has the gradients dt_j/dw_ji = (t_i - t_j) / W_j and
dt_j/dt_i = w_ji / W_j. A firing neuron with a small W_j (it crossed threshold just barely, its potential
rising slowly) passes large gradients; the backward clamps W_j at ``w_sum_min`` (1e-3 by default,
``relpsp.core.dense.W_SUM_MIN``). This reads a checkpoint, runs the first samples of a split in float64
and prints, for every spiking layer, the quantiles of W_j over the neurons that fire (over at most the
first ten million, torch.quantile's limit) and how many of them lie below a few levels. Training samples
by default (a diagnostic that informs training choices should not look at the test set). Nothing is
trained.

    python -m benchmarks.causal_weight_sums runs/mnist/checkpoint.ckpt --samples 1000 [--split test] [--out w.json]
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.common import environment, refuse_bad_output_file, write_json
from relpsp.data import load_dataset
from relpsp.nn import SpikingConv2d, SpikingLinear
from relpsp.train import data_options, load_trained

LEVELS = (0.01, 0.03, 0.1, 0.3, 1.0)
QUANTILES = (0.001, 0.01, 0.1, 0.5, 0.9)
QUANTILE_LIMIT = 10_000_000  # torch.quantile refuses inputs of more than 2**24 elements


def _checked(w_sum: Tensor, wt_sum: Tensor, t_out: Tensor, theta: float) -> Tensor:
    """W_j of the firing neurons, after checking t_j = (theta + sum w t) / W_j: a wrong causal set fails."""
    fired = torch.isfinite(t_out)
    w, t = w_sum[fired], t_out[fired]
    err = ((theta + wt_sum[fired]) / w - t).abs().max() if w.numel() else torch.tensor(0.0)
    if float(err) > 1e-6 * max(1.0, float(t.abs().max())):
        raise RuntimeError(f"causal sets do not reproduce the spike times (largest error {float(err):.3g})")
    return w


def dense_w_sums(t_in: Tensor, weight: Tensor, t_out: Tensor, theta: float) -> Tensor:
    """W_j of every (sample, neuron) that fires; ``t_in [B, N]``, ``weight [M, N]``, ``t_out [B, M]``."""
    causal = (t_in[:, None, :] < t_out[:, :, None]).to(weight.dtype)  # [B, M, N]
    finite_t = torch.where(torch.isfinite(t_in), t_in, 0.0)
    w = (causal * weight[None]).sum(-1)
    wt = (causal * (weight[None] * finite_t[:, None, :])).sum(-1)
    return _checked(w, wt, t_out, theta)


def conv_w_sums(t_in: Tensor, layer: SpikingConv2d, t_out: Tensor) -> Tensor:
    """W_j of every (sample, channel, position) that fires, by unfolding the padded input (+inf pads)."""
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    padded = F.pad(t_in, (p, p, p, p), value=math.inf)
    patches = F.unfold(padded, k, stride=s)  # [B, C_in*k*k, L]
    finite_t = torch.where(torch.isfinite(patches), patches, 0.0)
    b, _, n_pos = patches.shape
    out = t_out.reshape(b, layer.out_channels, n_pos)  # [B, C_out, L]
    w = layer.weight.detach().reshape(layer.out_channels, -1)  # [C_out, C_in*k*k]
    sums, wt_sums = torch.empty_like(out), torch.empty_like(out)
    for c in range(layer.out_channels):  # one output channel at a time keeps memory at B x K x L
        causal = (patches < out[:, c : c + 1, :]).to(w.dtype)
        sums[:, c] = torch.einsum("bkl,k->bl", causal, w[c])
        wt_sums[:, c] = torch.einsum("bkl,k->bl", causal * finite_t, w[c])
    return _checked(sums, wt_sums, out, layer.theta)


def layer_w_sums(model: nn.Sequential, x: Tensor) -> list[tuple[str, Tensor]]:
    """(name, W_j of its firing neurons) for every spiking layer of ``model`` on the batch ``x``."""
    found = []
    h = x
    with torch.no_grad():
        for i, m in enumerate(model):
            out = m(h)
            if isinstance(m, SpikingLinear):
                found.append((f"{i}:dense", dense_w_sums(h, m.weight, out, m.theta)))
            elif isinstance(m, SpikingConv2d):
                found.append((f"{i}:conv", conv_w_sums(h, m, out)))
            h = out
    return found


def layer_summary(w: Tensor) -> dict[str, Any]:
    """One layer's firing count, smallest W_j, quantiles and counts below ``LEVELS`` (``{"firing": 0}`` for
    a layer in which nothing fired)."""
    if not w.numel():
        return dict(firing=0)
    qs = torch.quantile(w[:QUANTILE_LIMIT], torch.tensor(QUANTILES, dtype=w.dtype)).tolist()
    below = {lv: int((w < lv).sum()) for lv in LEVELS}
    return dict(firing=int(w.numel()), min=float(w.min()), quantiles=dict(zip(QUANTILES, qs)), below=below)


def summary_line(row: dict[str, Any]) -> str:
    """``layer_summary``'s numbers as one printed line."""
    if not row["firing"]:
        return "no neuron fired"
    q_txt = ", ".join(f"q{q:g} {v:.3g}" for q, v in row["quantiles"].items())
    b_txt = ", ".join(f"<{lv:g}: {n:,}" for lv, n in row["below"].items())
    return f"{row['firing']:,} firing; min {row['min']:.3g}; {q_txt}; {b_txt}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--samples", type=int, default=1000, help="the split's first N samples")
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args()
    if args.samples < 1 or args.batch < 1:
        ap.error("--samples and --batch must be at least 1")
    refuse_bad_output_file(ap, args.out, args.checkpoint)
    model, cfg, _ = load_trained(args.checkpoint, backend="torch")
    x, _ = load_dataset(cfg.data.dataset, args.split, cfg.data.data_dir, **data_options(cfg))
    x = x[: args.samples].double()
    model = model.double()
    per_layer: dict[str, list[Tensor]] = {}
    for start in range(0, len(x), args.batch):
        for name, w in layer_w_sums(model, x[start : start + args.batch]):
            per_layer.setdefault(name, []).append(w)
    env = environment()
    print(f"{args.checkpoint}: {len(x)} {args.split} samples; {env['device']}; torch {env['torch']}")
    rows = {name: layer_summary(torch.cat(parts)) for name, parts in per_layer.items()}
    for name, row in rows.items():
        print(f"  {name}: {summary_line(row)}")
    if args.out:
        write_json(
            args.out, dict(environment=env, checkpoint=args.checkpoint, split=args.split, samples=len(x), layers=rows)
        )


if __name__ == "__main__":
    main()
