"""scripts/spike_lateness.py: summed causal weights and spike times of dense layers, on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from relpsp.nn import SpikingLinear
from tests.helpers import load_script

lateness = load_script("spike_lateness")


def test_causal_weight_sums_count_only_inputs_before_the_spike():
    t_in = torch.tensor([[0.0, 0.4, 2.0, math.inf]])
    weight = torch.tensor([[2.0, 0.01, 5.0, 7.0], [0.3, 0.3, 0.3, 0.3]])
    t_out = torch.tensor([[0.4995, math.inf]])
    w_sum = lateness.causal_weight_sums(t_in, weight, t_out)
    # neuron 0: inputs at 0 and 0.4 precede 0.4995; the one at 2.0 and the silent one do not
    assert w_sum[0, 0] == pytest.approx(2.01)
    # a silent neuron counts every finite input (all precede +inf)
    assert w_sum[0, 1] == pytest.approx(0.9)


def test_causal_weight_sums_in_chunks_equal_one_pass(monkeypatch):
    g = torch.Generator().manual_seed(0)
    t_in, weight, t_out = torch.rand(7, 5, generator=g), torch.randn(3, 5, generator=g), torch.rand(7, 3, generator=g)
    whole = lateness.causal_weight_sums(t_in, weight, t_out)
    monkeypatch.setattr(lateness, "CHUNK_ELEMENTS", 2 * weight.numel())  # two rows per chunk: 4 chunks
    torch.testing.assert_close(lateness.causal_weight_sums(t_in, weight, t_out), whole)
    expected = ((t_in[:, None, :] < t_out[:, :, None]) * weight[None]).sum(-1)
    torch.testing.assert_close(whole, expected)


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
