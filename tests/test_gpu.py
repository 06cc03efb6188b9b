"""CUDA checks (marker ``gpu``; skipped without CUDA): the torch backend on the GPU against the reference.

Run on a machine with a GPU: ``pytest -m gpu``. Outputs of the op under test are compared with the
float64 CPU reference, forward and every gradient; outputs are checked to be fully written (no NaN).
"""

from __future__ import annotations

import math

import pytest
import torch

from relpsp.functional import relpsp_conv2d, relpsp_conv2d_ref, relpsp_linear, relpsp_linear_ref
from tests.helpers import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _times(shape, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, math.inf, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_linear_cuda_matches_reference(dtype):
    t = _times((64, 50), 0)
    w = torch.randn(40, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.2 + 0.05
    g = torch.randn(64, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tr, wr = t.clone().requires_grad_(), w.clone().requires_grad_()
    ref = relpsp_linear_ref(tr, wr)
    torch.where(torch.isfinite(ref), ref * g, 0).sum().backward()
    tc = t.to("cuda", dtype).requires_grad_()
    wc = w.to("cuda", dtype).requires_grad_()
    out = relpsp_linear(tc, wc, backend="torch")
    assert not torch.isnan(out).any()
    torch.where(torch.isfinite(out), out * g.to("cuda", dtype), 0).sum().backward()
    assert_close("t_out", out.cpu().double(), ref.detach(), dtype)
    assert_close("grad_t_in", tc.grad.cpu().double(), tr.grad, dtype, kind="grad")
    assert_close("grad_weight", wc.grad.cpu().double(), wr.grad, dtype, kind="grad")


def test_conv_cuda_matches_reference():
    t = _times((4, 3, 9, 9), 3)
    w = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.3 + 0.08
    tr, wr = t.clone().requires_grad_(), w.clone().requires_grad_()
    ref = relpsp_conv2d_ref(tr, wr, stride=2, padding=1)
    torch.where(torch.isfinite(ref), ref, 0).sum().backward()
    tc, wc = t.cuda().requires_grad_(), w.cuda().requires_grad_()
    out = relpsp_conv2d(tc, wc, stride=2, padding=1, backend="torch")
    torch.where(torch.isfinite(out), out, 0).sum().backward()
    assert_close("t_out", out.cpu(), ref.detach(), torch.float64)
    assert_close("grad_t_in", tc.grad.cpu(), tr.grad, torch.float64, kind="grad")
    assert_close("grad_weight", wc.grad.cpu(), wr.grad, torch.float64, kind="grad")
