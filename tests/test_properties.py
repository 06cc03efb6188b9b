"""Property tests (hypothesis): random shapes and extreme values, every implementation agreeing.

Values are drawn from dyadic grids: times in {0, 1/8, ..., 3, +inf} (so ties and silent inputs are
common, and all-silent rows are forced sometimes), weights +-m/8 * 2^e with e in [-12, 12] (huge and
tiny), theta and t_max from small sets including cut-offs that act. On such grids every sum the model
needs is exact in float64 whatever the summation order, so the numba, torch, reference and oracle
implementations must take the same firing decisions even where V touches theta exactly at an input
time; remaining differences are a single rounding of a division.

Float64 only: float32 sums of these values are not exact, and a decision on an exact touch could then
legitimately differ between a float32 and a float64 accumulator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relpsp.core.dense import W_SUM_MIN
from relpsp.functional import (
    min_time_pool2d,
    relpsp_conv2d,
    relpsp_conv2d_ref,
    relpsp_linear,
    relpsp_linear_ref,
    spike_time_cross_entropy,
)
from relpsp.models import build_model
from tests import oracle
from tests.helpers import assert_close

INF = math.inf
F64 = torch.float64
TIMES = [0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, INF]
THETAS = [1.0, 0.5, 2.0, 0.375]
T_MAXES = [INF, 0.5, 1.0, 1.75, 3.0]

times_st = st.sampled_from(TIMES)
weight_st = st.builds(
    lambda sign, m, e: sign * m / 8 * 2.0**e,
    st.sampled_from([1.0, -1.0]),
    st.sampled_from([0, 1, 3, 5, 7, 8]),
    st.integers(-12, 12),
)


@st.composite
def arrays(draw, shape, elements):
    return np.array(draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape)))).reshape(shape)


@st.composite
def dense_layers(draw):
    b, n_in, n_out = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    t_in = draw(arrays((b, n_in), times_st))
    if draw(st.booleans()):
        t_in[draw(st.integers(0, b - 1))] = INF  # an all-silent row
    weight = draw(arrays((n_out, n_in), weight_st))
    return t_in, weight, draw(st.sampled_from(THETAS)), draw(st.sampled_from(T_MAXES))


def _run(fn, t_np, w_np, g_np):
    t = torch.tensor(t_np, dtype=F64, requires_grad=True)
    w = torch.tensor(w_np, dtype=F64, requires_grad=True)
    out = fn(t, w)
    out.backward(torch.tensor(g_np, dtype=F64))
    return out.detach(), t.grad, w.grad


def _check_times(name, out, t_in, t_max):
    """Outputs are +inf or finite, never before the earliest input spike and never after t_max."""
    o = out.numpy()
    assert not np.isnan(o).any() and not np.isneginf(o).any(), name
    fin = np.isfinite(o)
    assert (o[fin] <= t_max).all(), f"{name}: a spike after t_max"
    first = np.min(np.where(np.isfinite(t_in), t_in, INF).reshape(t_in.shape[0], -1), axis=1)
    first = first.reshape((-1,) + (1,) * (o.ndim - 1))
    assert (np.broadcast_to(first, o.shape)[fin] <= o[fin]).all(), f"{name}: a spike before any input"


@settings(max_examples=80)
@given(layer=dense_layers(), seed=st.integers(0, 2**16))
def test_dense_implementations_agree(layer, seed):
    t_np, w_np, theta, t_max = layer
    g_np = np.random.default_rng(seed).normal(size=(t_np.shape[0], w_np.shape[0]))
    expected = oracle.dense(t_np, w_np, theta, t_max)
    exp_in, exp_w = oracle.dense_grads(t_np, w_np, g_np, theta, t_max, W_SUM_MIN)
    mag_in, mag_w = oracle.dense_grads(t_np, w_np, g_np, theta, t_max, W_SUM_MIN, absolute=True)
    runs = {
        "numba": lambda t, w: relpsp_linear(t, w, theta=theta, t_max=t_max, backend="numba"),
        "torch": lambda t, w: relpsp_linear(t, w, theta=theta, t_max=t_max, backend="torch"),
        "ref": lambda t, w: relpsp_linear_ref(t, w, theta=theta, t_max=t_max),
    }
    for name, fn in runs.items():
        out, g_in, g_w = _run(fn, t_np, w_np, g_np)
        _check_times(name, out, t_np, t_max)
        assert_close(f"{name} t_out", out, expected, F64)
        assert torch.isfinite(g_in).all() and torch.isfinite(g_w).all(), name
        assert_close(f"{name} grad_t_in", g_in, exp_in, F64, kind="grad", scale=mag_in)
        assert_close(f"{name} grad_weight", g_w, exp_w, F64, kind="grad", scale=mag_w)
        # Exact zeros: inputs that never spike, and neurons that fire in no row.
        assert (g_in.numpy()[np.isinf(t_np)] == 0).all(), name
        assert (g_w.numpy()[np.isinf(expected).all(0)] == 0).all(), name


@st.composite
def conv_layers(draw):
    b, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    h, w = draw(st.integers(max(1, k - 2 * padding), 5)), draw(st.integers(max(1, k - 2 * padding), 5))
    t_in = draw(arrays((b, c_in, h, w), times_st))
    weight = draw(arrays((c_out, c_in, k, k), weight_st))
    return t_in, weight, stride, padding, draw(st.sampled_from(T_MAXES))


@settings(max_examples=40)
@given(layer=conv_layers(), seed=st.integers(0, 2**16))
def test_conv_implementations_agree(layer, seed):
    t_np, w_np, stride, padding, t_max = layer
    expected = oracle.conv2d(t_np, w_np, stride, padding, 1.0, t_max)
    g_np = np.random.default_rng(seed).normal(size=expected.shape)
    kw = dict(stride=stride, padding=padding, t_max=t_max)
    results = {
        "numba": _run(lambda t, w: relpsp_conv2d(t, w, backend="numba", **kw), t_np, w_np, g_np),
        "torch": _run(lambda t, w: relpsp_conv2d(t, w, backend="torch", **kw), t_np, w_np, g_np),
        "ref": _run(lambda t, w: relpsp_conv2d_ref(t, w, **kw), t_np, w_np, g_np),
    }
    _, r_in, r_w = results["ref"]
    for name, (out, g_in, g_w) in results.items():
        _check_times(name, out, t_np, t_max)
        assert_close(f"{name} t_out", out, expected, F64)
        assert torch.isfinite(g_in).all() and torch.isfinite(g_w).all(), name
        assert (g_in.numpy()[np.isinf(t_np)] == 0).all(), name
        scale = max(1.0, float(r_in.abs().max()), float(r_w.abs().max()))
        assert_close(f"{name} grad_t_in", g_in, r_in, F64, kind="grad", scale=scale)
        assert_close(f"{name} grad_weight", g_w, r_w, F64, kind="grad", scale=scale)


@st.composite
def pool_inputs(draw):
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    h, w = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    return draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w), times_st)), k, stride


@settings(max_examples=40)
@given(case=pool_inputs(), seed=st.integers(0, 2**16))
def test_pool_matches_oracle(case, seed):
    t_np, k, stride = case
    expected = oracle.min_pool2d(t_np, (k, k), (stride, stride))
    g_np = np.random.default_rng(seed).normal(size=expected.shape)
    g_np[np.isinf(expected)] = 0.0  # silent windows: see test_conv_pool.test_pool_silent_window_passes_no_gradient
    t = torch.tensor(t_np, dtype=F64, requires_grad=True)
    out = min_time_pool2d(t, k, stride)
    assert_close("t_out", out, expected, F64)
    out.backward(torch.tensor(g_np))
    grad = t.grad.numpy()
    assert_close("grad_t", grad, oracle.min_pool2d_grad(t_np, g_np, (k, k), (stride, stride)), F64, kind="grad")
    assert math.isclose(grad.sum(), g_np.sum(), rel_tol=1e-12, abs_tol=1e-12)  # every window sends its gradient once


@settings(max_examples=40)
@given(
    t_out=st.integers(1, 4).flatmap(lambda b: st.integers(1, 5).flatmap(lambda k: arrays((b, k), times_st))),
    margin=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_loss_finite_and_silent_outputs_get_no_gradient(t_out, margin, seed):
    target = torch.tensor(np.random.default_rng(seed).integers(0, t_out.shape[1], t_out.shape[0]))
    t = torch.tensor(t_out, dtype=F64, requires_grad=True)
    loss = spike_time_cross_entropy(t, target, silent_margin=margin)
    assert torch.isfinite(loss) and loss >= 0
    loss.backward()
    assert torch.isfinite(t.grad).all()
    assert (t.grad[~torch.isfinite(t.detach())] == 0).all()
    # Each row's gradient of a softmax cross-entropy over the fired outputs sums to
    # (1 - p_target) - sum of p over the other fired outputs, which lies in [-1, 1] / B.
    assert (t.grad.sum(1).abs() <= 1.0 / t_out.shape[0] + 1e-12).all()


@settings(max_examples=40)
@given(layer=dense_layers(), k=st.integers(-24, 24), seed=st.integers(0, 2**16))
def test_dense_extreme_time_scales(layer, k, seed):
    """Times, theta and t_max scaled by 2^k (from about 6e-8 to 1.7e7): the model is scale-equivariant
    (V is linear in time), so every implementation must give 2^k times the unscaled oracle's spike times,
    with finite gradients."""
    t_np, w_np, theta, t_max = layer
    s = 2.0**k
    g_np = np.random.default_rng(seed).normal(size=(t_np.shape[0], w_np.shape[0]))
    expected = oracle.dense(t_np, w_np, theta, t_max) * s
    assert_close("oracle scaled", oracle.dense(t_np * s, w_np, theta * s, t_max * s), expected, F64)
    exp_in, exp_w = oracle.dense_grads(t_np * s, w_np, g_np, theta * s, t_max * s, W_SUM_MIN)
    mag_in, mag_w = oracle.dense_grads(t_np * s, w_np, g_np, theta * s, t_max * s, W_SUM_MIN, absolute=True)
    runs = {
        "numba": lambda t, w: relpsp_linear(t, w, theta=theta * s, t_max=t_max * s, backend="numba"),
        "torch": lambda t, w: relpsp_linear(t, w, theta=theta * s, t_max=t_max * s, backend="torch"),
        "ref": lambda t, w: relpsp_linear_ref(t, w, theta=theta * s, t_max=t_max * s),
    }
    for name, fn in runs.items():
        out, g_in, g_w = _run(fn, t_np * s, w_np, g_np)
        _check_times(name, out, t_np * s, t_max * s)
        assert_close(f"{name} t_out", out, expected, F64)
        assert torch.isfinite(g_in).all() and torch.isfinite(g_w).all(), name
        assert_close(f"{name} grad_t_in", g_in, exp_in, F64, kind="grad", scale=mag_in)
        assert_close(f"{name} grad_weight", g_w, exp_w, F64, kind="grad", scale=mag_w)


INTENSITIES = [0.0, 1e-7, 0.25, 0.5, 1.0 - 1e-7, 1.0]


@st.composite
def model_cases(draw):
    if draw(st.booleans()):
        k = draw(st.integers(1, 3))
        h, w = draw(st.integers(k + 1, 7)), draw(st.integers(k + 1, 7))  # room for a 2x2 pool after the conv
        arch = f"{draw(st.integers(1, 3))}C{k}p{draw(st.integers(0, 1))}-P{draw(st.integers(1, 2))}-{draw(st.integers(1, 4))}"
        shape = (draw(st.integers(1, 2)), h, w)
    else:
        n = draw(st.integers(1, 12))
        arch = f"{n}-{draw(st.integers(1, 8))}-{draw(st.integers(1, 4))}"
        shape = (n,)
    b = draw(st.integers(1, 4))
    x = draw(arrays((b, *shape), st.one_of(st.sampled_from(INTENSITIES), st.floats(0.0, 1.0))))
    return {
        "arch": arch,
        "shape": shape,
        "x": x,
        "weight_scale": 2.0 ** draw(st.integers(-20, 20)),
        "theta": draw(st.sampled_from([1e-3, 1.0, 1e3])),
        "t_max": draw(st.sampled_from([INF, 0.5, 2.0])),
        "init_mean": draw(st.sampled_from([-2.0, 0.0, 5.0])),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=30)
@given(case=model_cases())
def test_models_on_extreme_inputs_stay_finite(case):
    """Whole float32 networks (MLP or conv-pool-dense) with weights scaled by 2^-20..2^20, thresholds of
    1e-3..1e3 and intensities at the edges of [0, 1]: spike times are finite or +inf (never NaN, never
    negative), the loss is finite, every gradient is finite, and the numba and torch backends agree."""
    results = {}
    for backend in ("numba", "torch"):
        torch.manual_seed(case["seed"])
        model = build_model(
            case["arch"],
            case["shape"],
            theta=case["theta"],
            t_max=case["t_max"],
            init_mean=case["init_mean"],
            backend=backend,
        )
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(case["weight_scale"])
        x = torch.tensor(case["x"], dtype=torch.float32)
        t_out = model(x)
        o = t_out.detach().numpy()
        assert not np.isnan(o).any() and (o >= 0).all(), backend
        assert (o[np.isfinite(o)] <= case["t_max"]).all(), backend
        target = torch.tensor(np.random.default_rng(case["seed"]).integers(0, o.shape[1], o.shape[0]))
        loss = spike_time_cross_entropy(t_out, target)
        assert torch.isfinite(loss), backend
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), backend
        results[backend] = (t_out.detach(), grads)
    (out_n, grads_n), (out_t, grads_t) = results["numba"], results["torch"]
    assert_close("t_out numba vs torch", out_n, out_t, torch.float32)
    for g_n, g_t in zip(grads_n, grads_t):
        assert_close("grad numba vs torch", g_n, g_t, torch.float32, kind="grad")
