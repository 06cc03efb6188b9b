"""Stateless modules of ``relpsp.nn``: each calls one functional op with its own parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relpsp.functional import latency_encode, min_time_pool2d, relpsp_conv2d, relpsp_linear
from relpsp.nn import LatencyEncode, MinTimePool2d, SpikingConv2d, SpikingLinear
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
