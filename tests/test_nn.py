"""Stateless modules of ``relpsp.nn``: each calls one functional op with its own parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from relpsp.functional import latency_encode, min_time_pool2d, relpsp_conv2d, relpsp_linear
from relpsp.nn import LatencyEncode, MinTimePool2d, SpikingConv2d, SpikingLinear
from tests import oracle
from tests.helpers import BACKENDS, assert_close


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_equal_functional_ops(backend):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    enc = LatencyEncode(t_max=2.0, zero_fires=True)
    conv = SpikingConv2d(1, 4, 3, stride=1, padding=1, theta=1.5, t_max=3.0, backend=backend)
    pool = MinTimePool2d(2)
    lin = SpikingLinear(64, 5, theta=0.5, backend=backend)
    net = nn.Sequential(enc, conv, pool, nn.Flatten(), lin)
    t0 = latency_encode(x, t_max=2.0, zero_fires=True)
    t1 = relpsp_conv2d(t0, conv.weight, padding=1, theta=1.5, t_max=3.0, backend=backend)
    t2 = min_time_pool2d(t1, 2)
    t3 = relpsp_linear(t2.flatten(1), lin.weight, theta=0.5, backend=backend)
    out = net(x)
    assert_close("t_out", out, t3.detach(), torch.float32)
    assert torch.isfinite(out).any()
    assert torch.equal(net(x), out)  # stateless: no reset needed, the same input gives the same output


def test_init_has_positive_mean():
    torch.manual_seed(1)
    lin = SpikingLinear(400, 800, theta=2.0, init_mean=5.0, init_std=1.0)
    w = lin.weight.detach().double()
    assert w.mean().item() == pytest.approx(5.0 * 2.0 / 400, abs=1e-3)
    assert w.std().item() == pytest.approx(1.0 * 2.0 / math.sqrt(400), rel=0.02)


@pytest.mark.parametrize(
    "make,match",
    [
        pytest.param(lambda: SpikingLinear(0, 3), r"in_features", id="linear_in_zero"),
        pytest.param(lambda: SpikingLinear(3, 2, theta=-1.0), r"theta", id="linear_theta"),
        pytest.param(lambda: SpikingLinear(3, 2, t_max=0.0), r"t_max", id="linear_t_max"),
        pytest.param(lambda: SpikingConv2d(1, 2, 3, padding=-1), r"padding", id="conv_padding"),
        pytest.param(lambda: SpikingConv2d(1, 2, 0), r"kernel_size", id="conv_kernel"),
        pytest.param(lambda: MinTimePool2d(0), r"kernel_size", id="pool_kernel"),
        pytest.param(lambda: LatencyEncode(t_max=-1.0), r"t_max", id="encode_t_max"),
    ],
)
def test_modules_reject_bad_arguments(make, match):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", ["SpikingConv2d", "WindowConv2d"])
def test_conv_init_uses_the_receptive_field_fan_in_and_theta(cls):
    """relpsp/nn.py module docstring: weights start from N(init_mean * theta / fan_in,
    (init_std * theta / sqrt(fan_in))^2); for a convolution fan_in = C_in * k * k.
    Kills: fan_in = C_in * k, fan_in = k * k, theta dropped from the conv init."""
    import relpsp.nn

    cls = getattr(relpsp.nn, cls)
    SpikingConv2d = relpsp.nn.SpikingConv2d
    torch.manual_seed(3)
    c_in, c_out, k = 4, 256, 3
    fan_in = c_in * k * k
    if cls is SpikingConv2d:
        theta = 2.0
        conv = cls(c_in, c_out, k, theta=theta, init_mean=5.0, init_std=1.0)
    else:  # the windowed layers have theta = 1
        theta = 1.0
        conv = cls(c_in, c_out, k, t_start=1.0, t_end=2.0, init_mean=5.0, init_std=1.0)
    w = conv.weight.detach().double()
    assert w.mean().item() == pytest.approx(5.0 * theta / fan_in, rel=0.05)
    assert w.std().item() == pytest.approx(1.0 * theta / math.sqrt(fan_in), rel=0.03)


def test_pool_module_uses_its_stride():
    """nn.MinTimePool2d(kernel_size, stride) documents a stride (default: the kernel size).
    Kills: forward calling min_time_pool2d(t, self.kernel_size) without the stride."""
    from relpsp.functional import min_time_pool2d
    from relpsp.nn import MinTimePool2d

    t = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = MinTimePool2d(2, stride=1)(t)
    assert out.shape == (2, 3, 5, 6)
    assert torch.equal(out, min_time_pool2d(t, 2, 1))
    assert torch.equal(MinTimePool2d(2)(t), min_time_pool2d(t, 2))  # default stride = kernel


# One neuron whose potential rises at 0.5 per unit time until t = 1, then at W = 1e-4: it spikes at
# t = 1 + 0.5 / 1e-4, and its exact gradients are 1 / W = 10,000 times the weights and time gaps.
_SLOW_T, _SLOW_W, _SLOW_G = [[0.0, 1.0]], [[0.5, -0.4999]], [[0.75]]


def _slow_neuron_grads(layer: nn.Module, t_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t_in = t_in.clone().requires_grad_(True)
    out = layer(t_in)
    out.backward(torch.full_like(out, _SLOW_G[0][0]))
    g_in, g_w = t_in.grad.reshape(-1), layer.weight.grad.reshape(-1)
    assert not g_in[2:].any() and not g_w[2:].any()  # the conv's two inputs that never spike get nothing
    first_two = (g_in[:2], g_w[:2])  # the neuron's two inputs come first in either layout
    return out.detach().reshape(1, 1), first_two[0].reshape(1, 2), first_two[1].reshape(1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_w_sum_min_guards_the_backward_of_both_layers_and_leaves_the_forward(backend, kind):
    t_np, w_np = np.array(_SLOW_T), np.array(_SLOW_W)
    exact_t = 1.0 + 0.5 / (0.5 - 0.4999)
    for w_sum_min in (1e-6, 0.1):
        if kind == "linear":
            layer = SpikingLinear(2, 1, backend=backend, w_sum_min=w_sum_min).double()
            t_in = torch.tensor(_SLOW_T, dtype=torch.float64)
        else:  # a kernel as large as the image: one output position, the same neuron
            layer = SpikingConv2d(1, 1, 2, backend=backend, w_sum_min=w_sum_min).double()
            t_in = torch.tensor([[[[0.0, 1.0], [math.inf, math.inf]]]], dtype=torch.float64)
        with torch.no_grad():
            layer.weight.view(-1)[:2] = torch.tensor(_SLOW_W[0], dtype=torch.float64)
            layer.weight.view(-1)[2:] = 0.0
        out, g_in, g_w = _slow_neuron_grads(layer, t_in)
        exp_in, exp_w = oracle.dense_grads(t_np, w_np, _SLOW_G, w_sum_min=w_sum_min)
        assert_close("t_out", out, [[exact_t]], torch.float64)  # the guard never moves a spike
        assert_close("grad_t_in", g_in, exp_in, torch.float64, kind="grad")
        assert_close("grad_weight", g_w, exp_w, torch.float64, kind="grad")
        if w_sum_min == 0.1:  # 1 / 0.1 instead of 1 / 1e-4: a thousand times smaller
            assert float(g_w[0, 0]) == pytest.approx(0.75 * (0.0 - exact_t) / 0.1, rel=1e-9)
    assert f"w_sum_min={0.1}" in repr(layer) and "w_sum_min" not in repr(SpikingLinear(2, 1))


@pytest.mark.parametrize("bad", [0.0, -1e-3, math.inf, math.nan])
def test_w_sum_min_must_be_finite_and_positive(bad):
    for make in (lambda: SpikingLinear(2, 1, w_sum_min=bad), lambda: SpikingConv2d(1, 1, 2, w_sum_min=bad)):
        with pytest.raises(ValueError, match="w_sum_min"):
            make()
