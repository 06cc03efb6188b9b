"""Convolution (``relpsp_conv2d`` and its ``_ref`` twin) and min-time pooling against the oracle.

The oracle loops over every output position explicitly (padding never spikes), so these tests check the
im2col path, strides, padding and shared weights as well as the neuron itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import relpsp.functional as functional_module
from relpsp.autograd import conv_kernel_applies
from relpsp.functional import min_time_pool2d, relpsp_conv2d, relpsp_conv2d_ref
from tests import oracle
from tests.helpers import DTYPES, assert_close

INF = math.inf

# "numba" runs the convolution kernel (one sort per image) wherever it applies, which is every case
# here; "numba-rows" forces the forward of larger images: the numba dense kernel on im2col rows (both
# use the same image backward, cpu_numba.conv_bwd).
CONV_BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("numba", id="numba"),
    pytest.param("numba-rows", id="numba-rows"),
]


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend(name)`` -> the backend argument for ``relpsp_conv2d``; "numba-rows" switches the
    convolution kernel off for the test."""

    def pick(name: str) -> str:
        if name == "numba-rows":
            monkeypatch.setattr(functional_module, "conv_kernel_applies", lambda *_: False)
            return "numba"
        return name

    return pick


def _t(x, dtype, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype, requires_grad=grad)


def conv_case(seed: int, dtype: torch.dtype, kernel=(3, 3), b: int = 2, c_in: int = 2, hw=(7, 6), c_out: int = 3):
    """Random conv layer: silent inputs, a tied row, a silent region, negative weights and an output
    channel with only negative weights. Float64 arrays exactly representable in ``dtype``."""
    rng = np.random.default_rng(seed)
    t_in = rng.uniform(0.0, 2.0, (b, c_in, *hw))
    t_in[rng.random(t_in.shape) < 0.2] = INF
    t_in[:, :, 2, :] = t_in[:, :, 2, :1]  # a row of tied times
    t_in[1, :, :3, :3] = INF  # a region with no spikes
    weight = rng.normal(0.2, 0.35, (c_out, c_in, *kernel))
    weight[-1] = -np.abs(weight[-1])
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return t_in.astype(np_dtype).astype(np.float64), weight.astype(np_dtype).astype(np.float64)


# (id, kernel, stride, padding)
CONV_CONFIGS = [
    pytest.param((3, 3), 1, 0, id="k3_s1_p0"),
    pytest.param((3, 3), 2, 1, id="k3_s2_p1"),
    pytest.param((3, 2), 1, 2, id="k3x2_s1_p2"),
    pytest.param((2, 2), 3, 0, id="k2_s3_p0"),
]


# --------------------------------------------------------------------------------------------------
# Convolution forward


@pytest.mark.parametrize("kernel,stride,padding", CONV_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_conv_forward_matches_oracle(impl, use_backend, dtype, kernel, stride, padding):
    backend = use_backend(impl)
    t_np, w_np = conv_case(100, dtype, kernel)
    t_max = 2.5
    expected = oracle.conv2d(t_np, w_np, stride, padding, 1.0, t_max)
    assert np.isfinite(expected).sum() >= 10 and np.isinf(expected).sum() >= 5
    assert np.isinf(expected[:, -1]).all()  # the inhibitory channel
    out = relpsp_conv2d(_t(t_np, dtype), _t(w_np, dtype), stride=stride, padding=padding, t_max=t_max, backend=backend)
    assert out.dtype == dtype
    assert_close("t_out", out, expected, dtype)
    ref = relpsp_conv2d_ref(_t(t_np, dtype), _t(w_np, dtype), stride=stride, padding=padding, t_max=t_max)
    assert_close("t_out_ref", ref, expected, dtype)


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_conv_padding_never_spikes(impl, use_backend):
    backend = use_backend(impl)
    # One spike at the centre of a 3x3 input, all weights 2: with padding 1 and a 3x3 kernel every
    # output position sees the spike and fires at 0.5 after it. Padding that spiked at t = 0 would make
    # every position fire earlier; padding that spiked at all would make a position with no real input
    # spike fire.
    t = torch.full((1, 1, 3, 3), INF, dtype=torch.float64)
    t[0, 0, 1, 1] = 1.0
    w = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64)
    out = relpsp_conv2d(t, w, padding=1, backend=backend)
    assert_close("t_out", out, np.full((1, 1, 3, 3), 1.5), torch.float64)
    out = relpsp_conv2d(t, w, padding=2, backend=backend)  # 5x5 output: the outer ring never sees it
    expected = np.full((1, 1, 5, 5), INF)
    expected[0, 0, 1:4, 1:4] = 1.5
    assert_close("t_out", out, expected, torch.float64)
    assert_close("oracle", oracle.conv2d(t.numpy(), w.numpy(), 1, 2), expected, torch.float64)


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_conv_pair_stride_and_padding(impl, use_backend):
    backend = use_backend(impl)
    t_np, w_np = conv_case(101, torch.float64, (2, 3), hw=(6, 8))
    out = relpsp_conv2d(
        _t(t_np, torch.float64), _t(w_np, torch.float64), stride=(1, 2), padding=(1, 0), backend=backend
    )
    # The oracle takes square strides/paddings: emulate (1, 2) / (1, 0) by padding rows and
    # subsampling columns of a stride-1 output.
    padded = np.pad(t_np, ((0, 0), (0, 0), (1, 1), (0, 0)), constant_values=INF)
    expected = oracle.conv2d(padded, w_np, 1, 0)[:, :, :, ::2]
    assert np.isfinite(expected).sum() >= 10
    assert_close("t_out", out, expected, torch.float64)


# --------------------------------------------------------------------------------------------------
# Convolution backward


def _grads(fn, t_in, weight, grad_out):
    t_in = t_in.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    out = fn(t_in, weight)
    out.backward(grad_out)
    return out.detach(), t_in.grad, weight.grad


@pytest.mark.parametrize("kernel,stride,padding", CONV_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_conv_backward_matches_ref(impl, use_backend, dtype, kernel, stride, padding):
    backend = use_backend(impl)
    t_np, w_np = conv_case(110, dtype, kernel)
    t_in, weight = _t(t_np, dtype), _t(w_np, dtype)
    shape = oracle.conv2d(t_np, w_np, stride, padding).shape
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(111), dtype=dtype)
    kw = dict(stride=stride, padding=padding, t_max=2.5)
    out, g_in, g_w = _grads(lambda t, w: relpsp_conv2d(t, w, backend=backend, **kw), t_in, weight, grad_out)
    ref, r_in, r_w = _grads(lambda t, w: relpsp_conv2d_ref(t, w, **kw), t_in, weight, grad_out)
    assert_close("t_out", out, ref, dtype)
    assert_close("grad_t_in", g_in, r_in, dtype, kind="grad")
    assert_close("grad_weight", g_w, r_w, dtype, kind="grad")
    assert r_in.abs().sum() > 0 and r_w.abs().sum() > 0
    assert (g_in[1, :, :3, :3] == 0).all()  # inputs that never spike


def test_conv_backward_scratch_serves_every_batch_size_from_one_buffer():
    """The numba conv backward's input-gradient scratch is one buffer per layer shape, as large as the
    largest batch yet; it used to be one per batch size, growing without bound for a caller who varies the
    batch. Each batch's gradients still equal the reference's, after larger and smaller batches."""
    pytest.importorskip("numba")
    from relpsp.kernels import load_cpu_kernels

    buffers = load_cpu_kernels()._local.__dict__.setdefault("buffers", {})
    t_np, w_np = conv_case(120, torch.float64, b=6)
    weight = _t(w_np, torch.float64)
    for b in (3, 6, 2, 5):
        t_in = _t(t_np[:b], torch.float64)
        grad_out = torch.randn(oracle.conv2d(t_np[:b], w_np, 1, 0).shape, dtype=torch.float64)
        _, g_in, g_w = _grads(lambda t, w: relpsp_conv2d(t, w, backend="numba"), t_in, weight, grad_out)
        _, r_in, r_w = _grads(relpsp_conv2d_ref, t_in, weight, grad_out)
        assert_close("grad_t_in", g_in, r_in, torch.float64, kind="grad")
        assert_close("grad_weight", g_w, r_w, torch.float64, kind="grad")
    mine = [k for k in buffers if k[0] == "conv_g_in" and k[1] == (2 * 7 * 6,)]
    assert len(mine) == 1 and buffers[mine[0]].shape == (6, 2 * 7 * 6)


@pytest.mark.parametrize("impl", ["ref", "torch", "numba", "numba-rows"])
@pytest.mark.parametrize("kernel,stride,padding", CONV_CONFIGS)
def test_conv_grads_match_oracle(kernel, stride, padding, impl, use_backend):
    backend = use_backend(impl)
    t_np, w_np = conv_case(120, torch.float64, kernel)
    kw = dict(stride=stride, padding=padding, t_max=2.5)
    g_np = np.random.default_rng(121).normal(size=oracle.conv2d(t_np, w_np, stride, padding).shape)
    exp_in, exp_w = oracle.conv2d_grads(t_np, w_np, g_np, stride, padding, 1.0, 2.5)
    if impl == "ref":

        def fn(t, w):
            return relpsp_conv2d_ref(t, w, **kw)
    else:

        def fn(t, w):
            return relpsp_conv2d(t, w, backend=backend, **kw)

    _, g_in, g_w = _grads(fn, _t(t_np, torch.float64), _t(w_np, torch.float64), _t(g_np, torch.float64))
    assert_close("grad_t_in", g_in, exp_in, torch.float64, kind="grad")
    assert_close("grad_weight", g_w, exp_w, torch.float64, kind="grad")
    # Inputs in the silent region and padding get nothing; the region's own entries are exactly 0.
    assert (g_in[1, :, :3, :3] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,kernel,stride",
    [((3, 4, 13, 11), (5, 5), (1, 1)), ((2, 3, 12, 12), (3, 2), (2, 3)), ((2, 1, 28, 28), (5, 5), (1, 1))],
    ids=["c4_k5", "c3_k3x2_s2x3", "c1_28x28_k5"],
)
def test_conv_kernel_equals_dense_kernel_on_rows(shape, kernel, stride, dtype):
    """``cpu_numba.conv_fwd`` (one sort per image, windows read from a rank bitmap) gives bit for bit
    what ``linear_fwd`` gives on the im2col rows: images with hundreds of spikes (several bitmap words,
    radix-sorted) and with few (insertion-sorted), ties, and an image with no spike at all."""
    pytest.importorskip("numba")
    from relpsp.kernels import cpu_numba

    rng = np.random.default_rng(7)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    t = rng.integers(0, 64, shape) / 32.0  # a coarse grid: many ties
    t[rng.random(shape) < 0.3] = INF
    t[0, :, 1:4, :] = 0.0  # inputs at t = 0
    t[-1] = INF  # an image with no spike
    t = t.astype(np_dtype)
    if shape[1] == 1:
        t[1, 0, rng.random(shape[2:]) < 0.9] = INF  # a sparse image: few spikes per window
    weight = rng.normal(0.1, 0.4, (6, shape[1], *kernel)).astype(np_dtype)
    rows = torch.nn.functional.unfold(torch.from_numpy(t), kernel, stride=stride)
    rows = rows.transpose(1, 2).reshape(-1, rows.shape[1]).contiguous().numpy()
    expected = cpu_numba.linear_fwd(rows, weight.reshape(6, -1), 1.0, 2.5)
    got = cpu_numba.conv_fwd(t, weight, stride, 1.0, 2.5)
    assert np.isfinite(expected[0]).mean() > 0.2 and np.isinf(expected[0]).mean() > 0.05
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,kernel,stride",
    [((3, 4, 13, 11), (5, 5), (1, 1)), ((3, 3, 12, 12), (3, 2), (2, 3)), ((0, 2, 6, 6), (3, 3), (1, 1))],
    ids=["c4_k5", "c3_k3x2_s2x3", "empty_batch"],
)
def test_conv_backward_kernel_equals_dense_backward_on_rows_then_fold(shape, kernel, stride, dtype):
    """``cpu_numba.conv_bwd`` (windows read from the padded image, their input gradients added onto it)
    gives what the dense ``linear_bwd`` on the im2col rows followed by F.fold gives, up to the order of
    the float sums; without the input gradient it returns None and the same weight gradient."""
    pytest.importorskip("numba")
    from relpsp.kernels import cpu_numba

    rng = np.random.default_rng(11)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    t = rng.integers(0, 64, shape) / 32.0  # ties included
    t[rng.random(shape) < 0.3] = INF
    t = t.astype(np_dtype)
    weight = rng.normal(0.2, 0.4, (5, shape[1], *kernel)).astype(np_dtype)
    t_out, w_sum = cpu_numba.conv_fwd(t, weight, stride, 1.0, INF)
    grad = rng.normal(size=t_out.shape).astype(np_dtype)
    cols = torch.nn.functional.unfold(torch.from_numpy(t), kernel, stride=stride)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1]).contiguous().numpy()
    g_rows, g_w_rows = cpu_numba.linear_bwd(grad, rows, weight.reshape(5, -1), t_out, w_sum, 1e-3)
    g_cols = torch.from_numpy(g_rows).reshape(shape[0], cols.shape[2], cols.shape[1]).transpose(1, 2)
    g_fold = torch.nn.functional.fold(g_cols, shape[2:], kernel, stride=stride).numpy()

    g_in, g_w = cpu_numba.conv_bwd(grad, t, weight, t_out, w_sum, stride, 1e-3)
    assert g_in is not None and g_in.dtype == np_dtype and g_w.dtype == np_dtype
    assert g_in.shape == shape and g_w.shape == weight.shape
    rtol = 1e-12 if np_dtype == np.float64 else 1e-5
    scale_in = max(1.0, float(np.abs(g_fold).max(initial=0.0)))
    scale_w = max(1.0, float(np.abs(g_w_rows).max(initial=0.0)))
    np.testing.assert_allclose(g_in, g_fold, rtol=0, atol=rtol * scale_in)
    np.testing.assert_allclose(g_w, g_w_rows.reshape(weight.shape), rtol=0, atol=rtol * scale_w)
    assert (g_in[np.isinf(t)] == 0).all()  # silent inputs get nothing
    if shape[0]:
        assert np.abs(g_in).max() > 0 and np.abs(g_w).max() > 0  # the case exercises real gradients

    g_none, g_w_only = cpu_numba.conv_bwd(grad, t, weight, t_out, w_sum, stride, 1e-3, need_in=False)
    assert g_none is None
    np.testing.assert_array_equal(g_w_only, g_w)


def test_conv_kernel_applies_where_the_bitmap_is_no_longer_than_a_window():
    assert conv_kernel_applies((12, 12), (5, 5))  # the paper's second convolution
    assert conv_kernel_applies((28, 28), (5, 5))
    assert not conv_kernel_applies((34, 34), (3, 3))  # a padded 32x32 image under a 3x3 kernel
    assert not conv_kernel_applies((9, 9), (1, 1))


def _conv_gradcheck_case(seed: int, stride: int, padding: int):
    for s in range(seed, seed + 500):
        rng = np.random.default_rng(s)
        t_in = rng.uniform(0.0, 2.0, (1, 1, 4, 4))
        t_in[rng.random(t_in.shape) < 0.15] = INF
        weight = rng.normal(0.4, 0.5, (2, 1, 3, 3))
        rows = oracle.conv2d_patches(t_in, 3, 3, stride, padding)
        rep = oracle.kink_report(rows, weight.reshape(2, -1))
        if rep["gap"] > 0.02 and rep["w_min"] > 0.1 and rep["v_silent"] < 0.95 and rep["v_before"] < 0.95:
            out = oracle.conv2d(t_in, weight, stride, padding)
            if np.isfinite(out).sum() >= 4 and np.isfinite(out[:, :, 0, 0]).any():  # a border position fires
                return t_in, weight
    raise AssertionError("no kink-free case found")  # pragma: no cover


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)], ids=["s1_p0", "s2_p1"])
@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_conv_gradcheck(impl, stride, padding):
    t_np, w_np = _conv_gradcheck_case(130, stride, padding)

    def fn(t, w):
        if impl == "ref":
            out = relpsp_conv2d_ref(t, w, stride=stride, padding=padding)
        else:
            out = relpsp_conv2d(t, w, stride=stride, padding=padding, backend=impl)
        return torch.where(torch.isfinite(out), out, 0.0)

    inputs = (_t(t_np, torch.float64, grad=True), _t(w_np, torch.float64, grad=True))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Min-time pooling


def pool_case(seed: int, dtype: torch.dtype, hw=(6, 7)):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 3.0, (2, 3, *hw))
    t[rng.random(t.shape) < 0.3] = INF
    t[0, 0, :3, :3] = INF  # a window with no spike
    t[1, 1, 0, 0] = t[1, 1, 0, 1] = t[1, 1, 1, 0] = 0.25  # a tie for the earliest spike
    t[1, 1, 1, 1] = 0.5
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return t.astype(np_dtype).astype(np.float64)


POOL_CONFIGS = [
    pytest.param(2, None, (2, 2), (2, 2), id="k2"),
    pytest.param(3, 2, (3, 3), (2, 2), id="k3_s2"),
    pytest.param((2, 3), (1, 2), (2, 3), (1, 2), id="k2x3_s1x2"),
]


@pytest.mark.parametrize("kernel,stride,k,s", POOL_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_forward_matches_oracle(dtype, kernel, stride, k, s):
    t_np = pool_case(200, dtype)
    expected = oracle.min_pool2d(t_np, k, s)
    assert np.isinf(expected).any() and np.isfinite(expected).any()
    out = min_time_pool2d(_t(t_np, dtype), kernel, stride)
    assert out.dtype == dtype
    assert_close("t_out", out, expected, dtype)


@pytest.mark.parametrize("kernel,stride,k,s", POOL_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_gradient_goes_to_earliest(dtype, kernel, stride, k, s):
    t_np = pool_case(210, dtype)
    expected = oracle.min_pool2d(t_np, k, s)
    g_np = np.random.default_rng(211).normal(size=expected.shape)
    g_np[np.isinf(expected)] = 0.0  # silent windows: see test_pool_silent_window_passes_no_gradient
    t = _t(t_np, dtype, grad=True)
    min_time_pool2d(t, kernel, stride).backward(_t(g_np, dtype))
    assert_close("grad_t", t.grad, oracle.min_pool2d_grad(t_np, g_np, k, s), dtype, kind="grad")
    if k == (2, 2):  # the tie at (1, 1, 0:2, 0:2) goes to the first position in row-major order
        assert t.grad[1, 1, 0, 0] == g_np[1, 1, 0, 0] and t.grad[1, 1, 0, 1] == 0 and t.grad[1, 1, 1, 0] == 0


def test_pool_silent_window_passes_no_gradient():
    # A window with no spike has output +inf; it has no earliest spike to send a gradient to, and a
    # non-firing input must get exactly zero gradient whatever the upstream gradient is.
    t = torch.full((1, 1, 2, 4), INF, dtype=torch.float64)
    t[0, 0, 1, 3] = 0.5
    t.requires_grad_(True)
    out = min_time_pool2d(t, 2)
    assert_close("t_out", out, [[[[INF, 0.5]]]], torch.float64)
    out.backward(torch.tensor([[[[3.0, 2.0]]]], dtype=torch.float64))
    expected = np.zeros((1, 1, 2, 4))
    expected[0, 0, 1, 3] = 2.0
    assert_close("grad_t", t.grad, expected, torch.float64, kind="grad")


@pytest.mark.parametrize("kernel,stride,k,s", POOL_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_numba_kernels_give_the_torch_paths_numbers_bit_for_bit(dtype, kernel, stride, k, s):
    """On the CPU with numba the pooling runs as ``relpsp.kernels.pool_numba``; it must give what
    ``-max_pool2d(-t)`` with the silent windows' gradient stopped gives: outputs, gradients (overlapping
    windows summed, ties to the first position) and the signs of zero gradients."""
    pytest.importorskip("numba")
    t_np = pool_case(230, dtype)
    upstream = torch.tensor(np.random.default_rng(231).normal(size=oracle.min_pool2d(t_np, k, s).shape), dtype=dtype)
    upstream[0, 0, 0, 0] = -0.0
    results = []
    for fused in (True, False):

        def pool(t, fused=fused):
            return min_time_pool2d(t, kernel, stride) if fused else functional_module._min_time_pool_torch(t, k, s)

        t, t_sum = _t(t_np, dtype, grad=True), _t(t_np, dtype, grad=True)
        pooled = pool(t)
        assert (pooled.grad_fn.name() == "_MinTimePoolBackward") == fused  # each path was taken
        pooled.backward(upstream)
        pool(t_sum).sum().backward()  # an expanded upstream gradient
        results.append((pooled.detach(), t.grad, t_sum.grad))
    assert torch.isinf(results[0][0]).any()
    for got, expected in zip(*results):
        assert got.dtype == dtype and torch.equal(got, expected)
        assert torch.equal(torch.signbit(got), torch.signbit(expected))


def test_pool_second_derivative_is_the_torch_paths():
    """A backward that builds a graph (create_graph) goes through autograd, so second derivatives exist
    and are those of ``-max_pool2d(-t)``."""
    t_np = pool_case(240, torch.float64)
    results = []
    for pool in (lambda t: min_time_pool2d(t, 2), lambda t: functional_module._min_time_pool_torch(t, (2, 2), (2, 2))):
        t = _t(t_np, torch.float64, grad=True)
        out = pool(t)
        (grad,) = torch.autograd.grad(torch.where(torch.isfinite(out), out, 0.0).pow(2).sum(), t, create_graph=True)
        (second,) = torch.autograd.grad(grad.pow(2).sum(), t)
        results.append((grad.detach(), second))
    assert bool(results[0][1].abs().sum() > 0)
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_pool_output_and_input_may_change_in_place_before_the_backward():
    """As with ``-max_pool2d(-t)`` (which keeps only its own negated copy of t), changing the pooled output or
    the input in place before the backward is allowed, and the gradient is that of the pooling itself."""
    results = []
    for pool in (lambda t: min_time_pool2d(t, 2), lambda t: functional_module._min_time_pool_torch(t, (2, 2), (2, 2))):
        t = torch.tensor([[[[0.3, 0.9, 0.1, 0.4], [0.8, 0.2, 0.7, 0.6]]]], dtype=torch.float64, requires_grad=True)
        x = t * 1.0
        out = pool(x)
        x.mul_(2.0)  # the input changed in place
        out.clamp_(max=0.25).mul(torch.tensor([2.0, 3.0], dtype=torch.float64)).sum().backward()
        results.append(t.grad)
    # the windows' earliest spikes, 0.2 at (1, 1) and 0.1 at (0, 2), are under the clamp and get 2 and 3
    expected = torch.tensor([[[[0.0, 0.0, 3.0, 0.0], [0.0, 2.0, 0.0, 0.0]]]], dtype=torch.float64)
    assert torch.equal(results[0], expected) and torch.equal(results[1], expected)


@pytest.mark.parametrize("kernel,stride", [(2, 2), (2, 1), (3, 2)])
def test_pool_gradient_with_create_graph_differentiates_as_the_torch_path(kernel, stride):
    """A gradient taken with create_graph is itself differentiable: with respect to the upstream gradient
    (silent windows' zeros with the torch path's signs) and with respect to the pooled input (zero)."""
    t_np = pool_case(250, torch.float64)
    results = []
    for pool in (
        lambda t: min_time_pool2d(t, kernel, stride),
        lambda t: functional_module._min_time_pool_torch(t, (kernel, kernel), (stride, stride)),
    ):
        t = _t(t_np, torch.float64, grad=True)
        out = pool(t)
        v = torch.randn(out.shape, generator=torch.Generator().manual_seed(251), dtype=torch.float64)
        v.requires_grad_(True)
        (grad_t,) = torch.autograd.grad(out, t, v, create_graph=True)
        (by_v,) = torch.autograd.grad(grad_t, v, torch.ones_like(grad_t), retain_graph=True)
        (by_t,) = torch.autograd.grad(grad_t.sum(), t)
        results.append((grad_t.detach(), by_v, by_t))
    assert torch.isinf(_t(oracle.min_pool2d(t_np, (kernel, kernel), (stride, stride)), torch.float64)).any()
    for got, expected in zip(*results):
        assert torch.equal(got, expected) and torch.equal(torch.signbit(got), torch.signbit(expected))


def test_pool_gradcheck():
    rng = np.random.default_rng(220)
    t_np = rng.permutation(np.linspace(0.1, 3.0, 2 * 5 * 5)).reshape(1, 2, 5, 5)  # distinct: no ties
    t_np[0, 0, 0, :2] = INF
    t = _t(t_np, torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda x: min_time_pool2d(x, 2, 1), (t,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Validation


def _conv_bad(kind):
    torch.manual_seed(0)
    t = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    w = torch.rand(3, 2, 3, 3, dtype=torch.float64)
    kw = {}
    if kind == "t_in_rank3":
        t = t[0]
    elif kind == "weight_rank2":
        w = w[:, :, 0, 0]
    elif kind == "channel_mismatch":
        w = torch.rand(3, 4, 3, 3, dtype=torch.float64)
    elif kind == "kernel_too_large":
        w = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    elif kind == "stride_zero":
        kw["stride"] = 0
    elif kind == "padding_negative":
        kw["padding"] = -1
    elif kind == "nan_time":
        t[0, 1, 2, 2] = math.nan
    elif kind == "negative_time":
        t[0, 0, 0, 0] = -1.0
    elif kind == "theta_zero":
        kw["theta"] = 0.0
    elif kind == "t_max_negative":
        kw["t_max"] = -2.0
    elif kind == "dtype_mismatch":
        w = w.float()
    elif kind == "no_output_channels":
        w = torch.rand(0, 2, 3, 3, dtype=torch.float64)
    elif kind == "no_input_channels":
        t, w = torch.rand(1, 0, 5, 5, dtype=torch.float64), torch.rand(3, 0, 3, 3, dtype=torch.float64)
    return t, w, kw


BAD_CONV = {
    "t_in_rank3": r"t_in must have 4 dimensions",
    "weight_rank2": r"weight must have 4 dimensions",
    "channel_mismatch": r"weight expects 4 input channels.*t_in\s+has 2",
    "kernel_too_large": r"kernel.*larger",
    "stride_zero": r"stride",
    "padding_negative": r"padding",
    "nan_time": r"t_in.*NaN",
    "negative_time": r"t_in.*negative",
    "theta_zero": r"theta",
    "t_max_negative": r"t_max",
    "dtype_mismatch": r"dtype",
    "no_output_channels": r"needs C_out, C_in >= 1, got \(0, 2, 3, 3\)",
    "no_input_channels": r"needs C_out, C_in >= 1, got \(3, 0, 3, 3\)",
}


@pytest.mark.parametrize("kind", list(BAD_CONV))
@pytest.mark.parametrize("fn", [relpsp_conv2d, relpsp_conv2d_ref], ids=["conv2d", "conv2d_ref"])
def test_conv_rejects_bad_input(fn, kind):
    t, w, kw = _conv_bad(kind)
    with pytest.raises(ValueError, match=BAD_CONV[kind]):
        fn(t, w, **kw)


def test_conv_rejects_bad_backend():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="backend must be one of"):
        relpsp_conv2d(torch.rand(1, 1, 3, 3), torch.rand(1, 1, 2, 2), backend="cuda")


BAD_POOL = {
    "rank3": (lambda: torch.rand(2, 4, 4), 2, None, r"t must have 4 dimensions"),
    "kernel_zero": (lambda: torch.rand(1, 1, 4, 4), 0, None, r"kernel_size"),
    "kernel_too_large": (lambda: torch.rand(1, 1, 4, 4), 5, None, r"kernel_size.*larger"),
    "stride_zero": (lambda: torch.rand(1, 1, 4, 4), 2, 0, r"stride"),
    "int_tensor": (lambda: torch.zeros(1, 1, 4, 4, dtype=torch.int64), 2, None, r"floating-point"),
    "nan_time": (lambda: torch.tensor([[[[0.5, math.nan], [1.0, 2.0]]]]), 2, None, r"NaN"),
    "negative_time": (lambda: torch.tensor([[[[0.5, -1.0], [1.0, 2.0]]]]), 2, None, r"negative"),
}


@pytest.mark.parametrize("kind", list(BAD_POOL))
def test_pool_rejects_bad_input(kind):
    torch.manual_seed(0)
    make, kernel, stride, match = BAD_POOL[kind]
    with pytest.raises(ValueError, match=match):
        min_time_pool2d(make(), kernel, stride)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_conv_spike_that_rounds_onto_its_last_causal_input_moves_just_above_it(backend):
    """tests/test_dense.py's rounding case through the convolution path (numba sorts each image once and
    walks every window itself): the spike moves to the next float above the input at 1, and that input
    keeps its gradient."""
    t = torch.tensor([[[[0.0, 1.0]]]], requires_grad=True)
    w = torch.tensor([[[[0.99999994, 1.0]]]], requires_grad=True)
    out = relpsp_conv2d(t, w, backend=backend)
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == torch.nextafter(torch.tensor(1.0), torch.tensor(math.inf)).item()
    out.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), [[[[0.5, 0.5]]]], rtol=1e-6)


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [
        ((2, 3, 9, 9), (3, 3), (1, 1), (0, 0)),
        ((2, 3, 9, 7), (3, 2), (2, 1), (1, 2)),
        ((0, 2, 6, 6), (5, 5), (1, 1), (0, 0)),
    ],
    ids=["square", "rectangular-strided-padded", "empty-batch"],
)
def test_im2col_rows_are_f_unfolds_rows_with_the_same_gradient(shape, kernel, stride, padding):
    """The strided-view im2col gives F.unfold's rows (column order c*kh*kw + i*kw + j, rows b*L + y*W_out
    + x, padding as +inf) and passes back the same gradient, summed over overlapping windows."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    t = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, INF, t)
    rows, (b, h_out, w_out) = functional_module._im2col(t, kernel, stride, padding)
    t_pad = torch.nn.functional.pad(t, (padding[1], padding[1], padding[0], padding[0]), value=INF)
    cols = torch.nn.functional.unfold(t_pad, kernel, stride=stride)
    expected = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    assert (b, h_out * w_out) == (shape[0], cols.shape[2])
    assert torch.equal(rows, expected)
    if shape[0]:
        finite = torch.where(torch.isfinite(t), t, 0.0)
        a, c = finite.clone().requires_grad_(), finite.clone().requires_grad_()
        weights = torch.randn(expected.shape, generator=g, dtype=torch.float64)
        (functional_module._im2col(a, kernel, stride, padding)[0] * weights).sum().backward()
        c_pad = torch.nn.functional.pad(c, (padding[1], padding[1], padding[0], padding[0]))
        c_rows = torch.nn.functional.unfold(c_pad, kernel, stride=stride).transpose(1, 2).reshape(-1, expected.shape[1])
        (c_rows * weights).sum().backward()
        assert_close("grad", a.grad, c.grad, torch.float64, kind="grad")
        assert a.grad.abs().sum() > 0
