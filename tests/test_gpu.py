"""CUDA checks (marker ``gpu``; skipped without CUDA): the torch and triton backends on the GPU against
the reference.

Run on a machine with a GPU: ``pytest -m gpu``. Outputs of the op under test are compared with the
float64 CPU reference, forward and every gradient; outputs are checked to be fully written (no NaN).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from relpsp.functional import relpsp_conv2d, relpsp_conv2d_ref, relpsp_linear, relpsp_linear_ref
from tests.helpers import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


GPU_BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param(
        "triton",
        id="triton",
        marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
    ),
]


def _times(shape, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, math.inf, t)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_linear_cuda_matches_reference(dtype, backend):
    t = _times((64, 50), 0)
    w = torch.randn(40, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.2 + 0.05
    g = torch.randn(64, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tr, wr = t.clone().requires_grad_(), w.clone().requires_grad_()
    ref = relpsp_linear_ref(tr, wr)
    torch.where(torch.isfinite(ref), ref * g, 0).sum().backward()
    tc = t.to("cuda", dtype).requires_grad_()
    wc = w.to("cuda", dtype).requires_grad_()
    out = relpsp_linear(tc, wc, backend=backend)
    assert not torch.isnan(out).any()
    torch.where(torch.isfinite(out), out * g.to("cuda", dtype), 0).sum().backward()
    assert_close("t_out", out.cpu().double(), ref.detach(), dtype)
    assert_close("grad_t_in", tc.grad.cpu().double(), tr.grad, dtype, kind="grad")
    assert_close("grad_weight", wc.grad.cpu().double(), wr.grad, dtype, kind="grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_conv_cuda_matches_reference(backend):
    t = _times((4, 3, 9, 9), 3)
    w = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.3 + 0.08
    tr, wr = t.clone().requires_grad_(), w.clone().requires_grad_()
    ref = relpsp_conv2d_ref(tr, wr, stride=2, padding=1)
    torch.where(torch.isfinite(ref), ref, 0).sum().backward()
    tc, wc = t.cuda().requires_grad_(), w.cuda().requires_grad_()
    out = relpsp_conv2d(tc, wc, stride=2, padding=1, backend=backend)
    torch.where(torch.isfinite(out), out, 0).sum().backward()
    assert_close("t_out", out.cpu(), ref.detach(), torch.float64)
    assert_close("grad_t_in", tc.grad.cpu(), tr.grad, torch.float64, kind="grad")
    assert_close("grad_weight", wc.grad.cpu(), wr.grad, torch.float64, kind="grad")


def _mnist_like(batch, n_in, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_in, generator=g, dtype=torch.float64)
    lit = torch.rand(batch, n_in, generator=g, dtype=torch.float64) < 0.19
    return torch.where(lit, 1.0 - x, math.inf)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_paper_sized_layers_match_float64_cpu():
    # 784-800 and 800-10 at batch 256, float32 on the GPU against the float64 CPU op (numba or torch) on
    # the same float32-rounded inputs and weights: both walks sum in float64, so only the rounding of the
    # results and the float32 gradient sums differ.
    t = _mnist_like(256, 784, 0)
    w1 = torch.randn(800, 784, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / 28 + 5 / 784
    for t_in, w in ((t, w1), (None, None)):
        if t_in is None:  # second layer: the first layer's float64 output
            t_in = relpsp_linear(t, w1).detach()
            w = torch.randn(10, 800, generator=torch.Generator().manual_seed(2), dtype=torch.float64) / 28 + 5 / 800
        t_in, w = t_in.float().double(), w.float().double()
        tr, wr = t_in.clone().requires_grad_(), w.clone().requires_grad_()
        ref = relpsp_linear(tr, wr)
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        torch.where(torch.isfinite(ref), ref * g, 0).sum().backward()
        tc = t_in.to("cuda", torch.float32).requires_grad_()
        wc = w.to("cuda", torch.float32).requires_grad_()
        out = relpsp_linear(tc, wc, backend="triton")
        torch.where(torch.isfinite(out), out * g.to("cuda", torch.float32), 0).sum().backward()
        assert_close("t_out", out.detach().cpu().double(), ref.detach(), torch.float32)
        assert_close("grad_t_in", tc.grad.cpu().double(), tr.grad, torch.float32, kind="grad")
        assert_close("grad_weight", wc.grad.cpu().double(), wr.grad, torch.float32, kind="grad")


def _windowed_cnn_grads(device: str) -> list[torch.Tensor]:
    """Output times and every parameter's gradient of a small windowed CNN (padded convolution whose
    inputs all spike, pooling, standardised weights) in float64 on ``device``, from the same weights."""
    from relpsp.models import build_model

    torch.manual_seed(0)
    net = build_model(
        "4C3p1-P2-4C3p1-6-3", (1, 8, 8), kernel="window", window=2.0, weight_norm=True, init_mean=0.5, init_std=1.5
    ).double()
    net.to(device)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    out = net(x)
    (out * torch.arange(1.0, 4.0, dtype=torch.float64, device=device)).sum().backward()
    return [out.detach().cpu()] + [p.grad.cpu() for p in net.parameters()]


def test_windowed_cnn_cuda_matches_cpu():
    """The windowed neuron and the pooling run as torch operations on CUDA and as numba kernels on the
    CPU (where numba is installed): the same network gives the same numbers to float64 rounding."""
    on_cpu = _windowed_cnn_grads("cpu")
    assert ((on_cpu[0] > 7.0) & (on_cpu[0] < 9.0)).all()  # every output inside its window [7, 9]
    assert all(bool(g.abs().sum() > 0) for g in on_cpu[1:])
    for got, expected in zip(_windowed_cnn_grads("cuda"), on_cpu, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
