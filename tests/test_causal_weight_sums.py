"""``benchmarks.causal_weight_sums``: W_j of every firing neuron (from the library's forward) equals the
slope of its potential at its spike (an independent check by finite differences), for dense and padded,
strided convolutional layers."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from benchmarks import causal_weight_sums as cws
from relpsp import cli
from relpsp.functional import relpsp_linear
from relpsp.nn import SpikingConv2d, SpikingLinear
from tests.test_npz_dataset import write_archive


def _slope_at_spike(t_in: np.ndarray, w: np.ndarray, t: float) -> float:
    """dV/dt at t from V(s) = sum_i w_i max(0, s - t_i), by central differences well inside one segment."""
    h = 1e-7 * max(1.0, abs(t))

    def v(s: float) -> float:
        fired = np.isfinite(t_in)
        return float(np.sum(w[fired] * np.maximum(0.0, s - t_in[fired])))

    return (v(t + h) - v(t - h)) / (2 * h)


def test_dense_sums_are_the_potential_slopes_at_the_spikes():
    g = torch.Generator().manual_seed(0)
    t_in = torch.rand(4, 9, generator=g, dtype=torch.float64)
    t_in[0, :3] = math.inf  # inputs that never spike are in no causal set
    layer = SpikingLinear(9, 5, backend="torch").double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 9, generator=g, dtype=torch.float64) * 0.3 + 0.4)
    weight = layer.weight.detach()
    t_out = relpsp_linear(t_in, weight, backend="torch")
    sums = cws.dense_w_sums(t_in, layer, t_out)
    fired = torch.isfinite(t_out)
    assert sums.numel() == int(fired.sum()) > 10
    slopes = [_slope_at_spike(t_in[b].numpy(), weight[j].numpy(), float(t_out[b, j])) for b, j in fired.nonzero()]
    np.testing.assert_allclose(sums.numpy(), slopes, rtol=1e-5)
    assert (sums > 0).all()  # a neuron fires only on a rising potential


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_conv_sums_are_the_potential_slopes_at_the_spikes(stride, padding):
    torch.manual_seed(1)
    layer = SpikingConv2d(2, 3, 3, stride=stride, padding=padding, backend="torch").double()
    t_in = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    t_in[t_in > 0.8] = math.inf
    with torch.no_grad():
        t_out = layer(t_in)
    sums = cws.conv_w_sums(t_in, layer, t_out)
    padded = np.pad(t_in.numpy(), ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=np.inf)
    w = layer.weight.detach().numpy()
    slopes = []
    for b, c, y, x in torch.isfinite(t_out).nonzero().tolist():  # the same order as the boolean mask
        patch = padded[b, :, y * stride : y * stride + 3, x * stride : x * stride + 3]
        slopes.append(_slope_at_spike(patch.ravel(), w[c].ravel(), float(t_out[b, c, y, x])))
    assert len(slopes) > 10
    np.testing.assert_allclose(sums.numpy(), slopes, rtol=1e-5)


def test_sums_that_do_not_give_the_layers_spike_times_are_refused():
    t_in = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    layer = SpikingLinear(2, 1, backend="torch").double()
    with torch.no_grad():
        layer.weight.fill_(0.5)
    t_out = relpsp_linear(t_in, layer.weight.detach(), backend="torch")  # 1.5: both inputs causal
    with pytest.raises(RuntimeError, match="do not reproduce the spike times"):
        cws.dense_w_sums(t_in, layer, t_out * 0.6)  # 0.9, with only one input before it: not this layer's
    with pytest.raises(RuntimeError, match="do not reproduce the spike times"):
        cws.dense_w_sums(t_in, layer, torch.full_like(t_out, math.inf))  # silent where the layer fires


def test_main_reads_a_checkpoint_and_reports_every_spiking_layer(tmp_path, monkeypatch, capsys):
    write_archive(tmp_path / "mine.npz")
    run = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "mine.npz"), "--arch", "8C3-P2-3", "--epochs", "1"]
    assert cli.main([*argv, "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "w.json"
    monkeypatch.setattr(sys, "argv", ["cws", str(run / "checkpoint.ckpt"), "--samples", "20", "--out", str(out)])
    cws.main()
    assert "20 train samples" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["split"] == "train" and res["samples"] == 20
    assert list(res["layers"]) == ["1:conv", "4:dense"]
    for layer in res["layers"].values():
        assert layer["firing"] > 0 and layer["min"] > 0
        assert sorted(layer["below"].values()) == list(layer["below"].values())  # counts grow with the level


def test_layer_summary_counts_below_each_level_and_names_a_silent_layer():
    row = cws.layer_summary(torch.tensor([0.005, 0.02, 0.05, 0.2, 0.5, 2.0], dtype=torch.float64))
    assert row["firing"] == 6 and row["min"] == 0.005
    assert row["below"] == {0.01: 1, 0.03: 2, 0.1: 3, 0.3: 4, 1.0: 5}
    assert row["quantiles"][0.5] == pytest.approx(0.125)  # halfway between 0.05 and 0.2
    assert "6 firing; min 0.005" in cws.summary_line(row) and "<0.1: 3" in cws.summary_line(row)
    silent = cws.layer_summary(torch.zeros(0, dtype=torch.float64))
    assert silent == {"firing": 0} and cws.summary_line(silent) == "no neuron fired"
