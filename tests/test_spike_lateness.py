"""scripts/spike_lateness.py: summed causal weights and spike times of dense layers, on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from relpsp.nn import SpikingLinear
from tests.helpers import load_script

lateness = load_script("spike_lateness")


def test_w_sum_counts_only_inputs_before_the_spike():
    """Inputs at 0 and 0.4 precede the spike at 0.4995 (W = 2.01); the one at 2.0 and the silent one do not."""
    layer = SpikingLinear(4, 1, theta=1.0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 0.01, 5.0, 7.0]]))
    (s,) = lateness.dense_layer_stats(torch.nn.Sequential(layer), torch.tensor([[0.0, 0.4, 2.0, math.inf]]))
    assert s["w_sum_quantiles"] == pytest.approx([2.01] * 4)
    assert s["t_max"] == pytest.approx(1.004 / 2.01)


def test_a_layer_that_never_fires_has_no_quantiles():
    layer = SpikingLinear(2, 3, theta=1.0)
    with torch.no_grad():
        layer.weight.fill_(-0.1)
    (s,) = lateness.dense_layer_stats(torch.nn.Sequential(layer), torch.zeros(4, 2))
    assert s["fired"] == 0.0 and s["w_sum_quantiles"] is None and s["t_max"] == math.inf


def test_dense_layer_stats_and_output_times_on_a_network_with_known_spikes():
    layer = SpikingLinear(2, 2, theta=1.0)
    with torch.no_grad():
        # neuron 0: W = 1 from two inputs at 0 -> t = 1; neuron 1: W = 0.01 from the same -> t = 100
        layer.weight.copy_(torch.tensor([[0.5, 0.5], [0.005, 0.005]]))
    model = torch.nn.Sequential(layer)
    x = torch.zeros(3, 2)  # spike times, both inputs at t = 0
    ((s,),) = [lateness.dense_layer_stats(model, x)]
    assert s["shape"] == (2, 2) and s["fired"] == 1.0
    q = s["w_sum_quantiles"]
    assert q[0] == pytest.approx(0.01) and q[-1] == pytest.approx(0.505)  # median of {1, 1, 1, .01, .01, .01}
    # torch.median: the lower of the two middle values of {1, 1, 1, 100, 100, 100}
    assert s["t_max"] == pytest.approx(100.0) and s["t_median"] == pytest.approx(1.0)
    with torch.no_grad():
        t_out = model(x)
    o = lateness.output_times(t_out, torch.tensor([0, 1, 0]))
    assert o["right_max"] == pytest.approx(100.0) and o["right_median"] == pytest.approx(1.0)
    assert o["wrong_max"] == pytest.approx(100.0) and o["wrong_median"] == pytest.approx(100.0)
