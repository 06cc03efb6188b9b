"""Causal weight sums W_j of a trained ReL-PSP network: how close to zero they come.

A ReL-PSP neuron that fires at t_j = (theta + sum_{i in C_j} w_ji t_i) / W_j, W_j = sum_{i in C_j} w_ji
(C_j: its inputs that spiked before t_j), has the gradients dt_j/dw_ji = (t_i - t_j) / W_j and
dt_j/dt_i = w_ji / W_j. A firing neuron with a small W_j (it crossed threshold just barely, its potential
rising slowly) passes large gradients; the backward clamps W_j at ``w_sum_min`` (1e-3 by default,
``relpsp.core.dense.W_SUM_MIN``). This reads a checkpoint, runs the first samples of a split in float64,
takes each layer's W_j from the library's exact forward (checked to give the layer's spike times) and prints, for every spiking layer, the quantiles of W_j over the neurons that fire (over at most the
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
from relpsp.autograd import im2col_rows
from relpsp.core.dense import relpsp_linear_fwd_torch
from relpsp.data import load_dataset
from relpsp.nn import SpikingConv2d, SpikingLinear
from relpsp.train import data_options, load_trained

LEVELS = (0.01, 0.03, 0.1, 0.3, 1.0)
QUANTILES = (0.001, 0.01, 0.1, 0.5, 0.9)
QUANTILE_LIMIT = 10_000_000  # torch.quantile refuses inputs of more than 2**24 elements


def _fired_w_sums(t: Tensor, w_sum: Tensor, t_out: Tensor) -> Tensor:
    """W_j of the firing neurons, after checking that the forward that gave them (``t``) gives the layer's
    own spike times ``t_out``: rows or a layout that do not match the layer fail."""
    fired = torch.isfinite(t_out)
    if not torch.equal(torch.isfinite(t), fired) or not torch.allclose(t[fired], t_out[fired], rtol=1e-9, atol=0):
        raise RuntimeError("the recomputed W_j do not reproduce the spike times of the layer's output")
    return w_sum[fired]


def dense_w_sums(t_in: Tensor, layer: SpikingLinear, t_out: Tensor) -> Tensor:
    """W_j of every (sample, neuron) that fires: the library's exact forward (``relpsp_linear_fwd_torch``)
    returns them beside the spike times; ``t_in [B, N]``, ``t_out [B, M]`` (the layer's output)."""
    t, w_sum = relpsp_linear_fwd_torch(t_in, layer.weight.detach(), layer.theta, layer.t_max)
    return _fired_w_sums(t, w_sum, t_out)


def conv_w_sums(t_in: Tensor, layer: SpikingConv2d, t_out: Tensor) -> Tensor:
    """W_j of every (sample, channel, position) that fires, in ``t_out``'s ``[B, C, H, W]`` order: the same
    forward on the layer's receptive fields (``im2col_rows`` of the input padded with +inf)."""
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    rows = im2col_rows(F.pad(t_in, (p, p, p, p), value=math.inf), (k, k), (s, s))
    t, w_sum = relpsp_linear_fwd_torch(rows, layer.weight.detach().flatten(1), layer.theta, layer.t_max)
    b, c, h, w = t_out.shape

    def as_maps(x: Tensor) -> Tensor:
        return x.reshape(b, h, w, c).permute(0, 3, 1, 2)

    return _fired_w_sums(as_maps(t), as_maps(w_sum), t_out)


def layer_w_sums(model: nn.Sequential, x: Tensor) -> list[tuple[str, Tensor]]:
    """(name, W_j of its firing neurons) for every spiking layer of ``model`` on the batch ``x``."""
    found = []
    h = x
    with torch.no_grad():
        for i, m in enumerate(model):
            out = m(h)
            if isinstance(m, SpikingLinear):
                found.append((f"{i}:dense", dense_w_sums(h, m, out)))
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
