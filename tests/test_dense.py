"""The exact dense layer (``relpsp.functional.relpsp_linear`` and its ``_ref`` twin) against the oracle.

Forward: every backend and dtype equals the float64 event-driven oracle (tests/oracle.py) on inputs with
negative weights, ties, silent inputs, silent neurons, dips below threshold and t_max cut-offs.
Backward, three ways (style convention 5): Function vs autograd through ``_ref`` with a random upstream
gradient; float64 ``gradcheck`` away from kinks; ``_ref`` vs the oracle's STDBP gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import relpsp.core.dense as dense_module
from relpsp.autograd import resolve_backend
from relpsp.core.dense import W_SUM_MIN
from relpsp.functional import relpsp_linear, relpsp_linear_ref
from tests import oracle
from tests.helpers import (
    BACKENDS,
    DTYPES,
    ROUNDS_ONTO_INPUT,
    assert_close,
    assert_weight_sum_is_causal_mask,
    crossings_just_after_an_input,
    crossings_just_before_the_next_input,
)

INF = math.inf
F64 = torch.float64


def _t(x, dtype, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype, requires_grad=grad)


def _grads(fn, t_in, weight, grad_out):
    """Run ``fn`` on fresh leaves and back-propagate ``grad_out``: ``(t_out, grad_t_in, grad_weight)``."""
    t_in = t_in.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    out = fn(t_in, weight)
    out.backward(grad_out)
    return out.detach(), t_in.grad, weight.grad


def dense_case(seed: int, dtype: torch.dtype, b: int = 6, n_in: int = 12, n_out: int = 8):
    """Random layer with every feature the model has to get right; returned as float64 arrays that are
    exactly representable in ``dtype`` (so the oracle sees what the library sees).

    Row 0 / neuron 0 embed the dip-and-recross neuron: V = 2t crosses 1 at t = 0.5, falls back below 1
    after the inhibitory input at t = 1 and crosses again at t = 4 (the value of the closed form over
    all inputs). The last row has no input spike; the last neuron has only negative weights.
    """
    rng = np.random.default_rng(seed)
    t_in = rng.uniform(0.0, 2.0, (b, n_in))
    t_in[rng.random((b, n_in)) < 0.2] = INF
    t_in[:, 5] = t_in[:, 4]  # ties
    t_in[:, 6] = t_in[:, 4]
    t_in[1, 7] = 0.0
    t_in[-1] = INF
    weight = rng.normal(0.15, 0.45, (n_out, n_in))
    weight[-1] = -np.abs(weight[-1])
    t_in[0, :4] = [0.0, 1.0, 3.0, INF]
    t_in[0, 4:] = INF
    weight[0, :4] = [2.0, -3.0, 2.0, 0.5]
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return t_in.astype(np_dtype).astype(np.float64), weight.astype(np_dtype).astype(np.float64)


def gradcheck_case(seed: int, t_max: float = INF, b: int = 3, n_in: int = 6, n_out: int = 4):
    """A float64 layer kept away from every kink (checked with the oracle, not assumed)."""
    for s in range(seed, seed + 500):
        rng = np.random.default_rng(s)
        t_in = rng.uniform(0.0, 2.0, (b, n_in))
        t_in[rng.random((b, n_in)) < 0.15] = INF
        weight = rng.normal(0.35, 0.5, (n_out, n_in))
        weight[-1] = -np.abs(weight[-1])
        rep = oracle.kink_report(t_in, weight, 1.0, t_max)
        t_out = oracle.dense(t_in, weight, 1.0, t_max)
        has_neg_causal = any(((t_in[r] < t_out[r, j]) & (weight[j] < 0)).any() for r in range(b) for j in range(n_out))
        if (
            rep["gap"] > 0.02
            and rep["w_min"] > 0.1
            and rep["v_silent"] < 0.95
            and rep["v_before"] < 0.95
            and rep["cut"] > 0.02
            and np.isfinite(t_out).sum() >= b * n_out // 2
            and has_neg_causal
        ):
            return t_in, weight
    raise AssertionError("no kink-free case found")  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# Forward


# (id, t_in, weight, theta, t_max, hand-computed spike time)
HAND_CASES = [
    ("single_ramp", [0.0], [2.0], 1.0, INF, 0.5),
    ("theta_scales", [0.5], [1.0], 2.5, INF, 3.0),
    # V = 2t crosses at 0.5; the closed form over all inputs gives the later crossing at 4.
    ("dip_and_recross_first_wins", [0.0, 1.0, 3.0], [2.0, -3.0, 2.0], 1.0, INF, 0.5),
    # V rises to 0.25, falls to -1.25 at t = 1, then rises with slope 2: one crossing at 2.125.
    ("dip_below_zero_then_cross", [0.0, 0.25, 1.0], [1.0, -3.0, 4.0], 1.0, INF, 2.125),
    # V touches theta exactly at the inhibitory input's time: that is a spike (first time V reaches theta).
    ("touch_at_input_time", [0.0, 1.0], [1.0, -5.0], 1.0, INF, 1.0),
    # Tied inputs enter together: +4 alone would fire at 5/4.5 = 1.11, but with -4 the slope stays 0.5.
    ("tie_excitation_first", [0.0, 1.0, 1.0], [0.5, 4.0, -4.0], 1.0, INF, 2.0),
    ("tie_inhibition_first", [0.0, 1.0, 1.0], [0.5, -4.0, 4.0], 1.0, INF, 2.0),
    ("zero_slope_then_rise", [0.0, 0.0, 1.0], [1.0, -1.0, 0.5], 1.0, INF, 3.0),
    ("inhibition_after_spike", [0.0, 1.5], [1.0, -10.0], 1.0, INF, 1.0),
    ("peak_below_theta", [0.0, 1.0], [0.5, -0.5], 1.0, INF, INF),
    ("negative_only", [0.0, 0.5], [-1.0, -2.0], 1.0, INF, INF),
    ("no_input_spikes", [INF, INF], [1.0, 1.0], 1.0, INF, INF),
    ("silent_input_ignored", [INF, 0.0], [-100.0, 1.0], 1.0, INF, 1.0),
    ("cut_by_t_max", [0.0], [0.5], 1.0, 1.5, INF),
    ("t_max_inclusive", [0.0], [0.5], 1.0, 2.0, 2.0),
    ("huge_weight", [0.0, 0.25], [1e6, -1e6], 1.0, INF, 1e-6),
    ("late_input_after_t_max", [0.0, 3.0], [0.25, 10.0], 1.0, 2.5, INF),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in HAND_CASES])
def test_oracle_matches_hand_computation(case):
    _, t_in, w, theta, t_max, expected = case
    got = oracle.neuron(t_in, w, theta, t_max)
    if math.isfinite(expected):
        assert got == pytest.approx(expected, rel=1e-12)
    else:
        assert got == INF


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in HAND_CASES])
def test_forward_hand_cases(case, backend, dtype):
    _, t_in, w, theta, t_max, expected = case
    out = relpsp_linear(_t([t_in], dtype), _t([w], dtype), theta=theta, t_max=t_max, backend=backend)
    assert out.dtype == dtype and out.shape == (1, 1)
    assert_close("t_out", out, [[expected]], dtype)
    ref = relpsp_linear_ref(_t([t_in], dtype), _t([w], dtype), theta=theta, t_max=t_max)
    assert_close("t_out_ref", ref, [[expected]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_rows_of_every_length_match_oracle(backend, dtype):
    """Rows with 0 to 70 input spikes (the numba kernel sorts short rows by insertion and long ones by
    radix), on a coarse grid of times so that most rows hold ties, match the oracle."""
    rng = np.random.default_rng(3)
    n_in = 70
    t_in = np.full((n_in + 1, n_in), INF)
    for r in range(n_in + 1):  # row r has exactly r input spikes, in a random order of the columns
        t_in[r, rng.permutation(n_in)[:r]] = rng.integers(0, 12, r) / 8.0
    np_dtype = np.float64 if dtype == F64 else np.float32
    weight = rng.normal(0.02, 0.3, (9, n_in)).astype(np_dtype).astype(np.float64)
    expected = oracle.dense(t_in, weight, 1.0, INF)
    assert np.isfinite(expected).sum() >= 100 and np.isinf(expected).sum() >= 100
    out = relpsp_linear(_t(t_in, dtype), _t(weight, dtype), theta=1.0, t_max=INF, backend=backend)
    assert_close("t_out", out, expected, dtype)


@pytest.mark.parametrize("theta,t_max", [(1.0, INF), (1.0, 2.2), (2.5, INF)], ids=["theta1", "t_max2.2", "theta2.5"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_oracle(backend, dtype, theta, t_max):
    t_in, weight = dense_case(10, dtype)
    expected = oracle.dense(t_in, weight, theta, t_max)
    # The case must exercise what it claims to: firing and silent neurons, a cut-off that acts.
    assert np.isfinite(expected).sum() >= 10 and np.isinf(expected).sum() >= 8
    assert np.isinf(expected[-1]).all() and np.isinf(expected[:, -1]).all()
    if math.isfinite(t_max):
        assert (np.isfinite(oracle.dense(t_in, weight, theta)) & np.isinf(expected)).sum() >= 3
    if theta == 1.0:
        assert expected[0, 0] == 0.5  # the embedded dip-and-recross neuron: the first crossing
    out = relpsp_linear(_t(t_in, dtype), _t(weight, dtype), theta=theta, t_max=t_max, backend=backend)
    assert out.dtype == dtype
    assert_close("t_out", out, expected, dtype)
    ref = relpsp_linear_ref(_t(t_in, dtype), _t(weight, dtype), theta=theta, t_max=t_max)
    assert_close("t_out_ref", ref, expected, dtype)


def test_backend_auto_matches_oracle():
    assert resolve_backend("auto", torch.zeros(1, dtype=torch.float32)) == "numba"  # numba is installed here
    assert resolve_backend("auto", torch.zeros(1, dtype=torch.float16)) == "torch"
    t_in, weight = dense_case(11, torch.float64)
    out = relpsp_linear(_t(t_in, torch.float64), _t(weight, torch.float64), t_max=1.8)
    assert_close("t_out", out, oracle.dense(t_in, weight, 1.0, 1.8), torch.float64)


@pytest.mark.parametrize(
    "backend,block_elems",
    [
        pytest.param("torch", None, id="torch-default_blocks"),
        pytest.param("torch", 4096, id="torch-tiny_blocks"),
        pytest.param("numba", None, id="numba"),
    ],
)
def test_many_inputs_and_rows_match_oracle(backend, block_elems, monkeypatch):
    # 150 inputs: the torch path scans sorted inputs in chunks of 64 carrying the prefix sums, so most
    # neurons here fire only in a later chunk. Tiny blocks make it (and the backward) split the rows
    # into many blocks too; the numba path splits 40 rows over its thread chunks.
    if block_elems is not None:
        monkeypatch.setattr(dense_module, "_BLOCK_ELEMS", block_elems)
    rng = np.random.default_rng(70)
    t_np = rng.uniform(0.0, 2.0, (40, 150))
    t_np[rng.random(t_np.shape) < 0.15] = INF
    t_np[3] = INF
    w_np = rng.normal(0.012, 0.06, (7, 150))
    w_np[0] *= 8.0  # fires early, within the first chunk
    g_np = rng.normal(size=(40, 7))
    expected = oracle.dense(t_np, w_np)
    causal = (t_np[:, None, :] < expected[:, :, None]).sum(2)[np.isfinite(expected)]
    assert (causal > 64).sum() >= 100 and (causal <= 64).sum() >= 20 and np.isinf(expected).sum() >= 7
    exp_in, exp_w = oracle.dense_grads(t_np, w_np, g_np)
    out, g_in, g_w = _grads(
        lambda t, w: relpsp_linear(t, w, backend=backend), _t(t_np, F64), _t(w_np, F64), _t(g_np, F64)
    )
    assert_close("t_out", out, expected, F64)
    assert_close("grad_t_in", g_in, exp_in, F64, kind="grad")
    assert_close("grad_weight", g_w, exp_w, F64, kind="grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    w = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    out = relpsp_linear(t, w, backend=backend)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert t.grad.shape == (0, 4)
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_crossing_exactly_at_an_input_is_decided_alike_by_every_implementation():
    """The first input alone (w = 49) reaches theta = 1 at the real time 1/49; the second (w = -100)
    arrives at fl(1/49), which lies just before it: 49 * fl(1/49) < 1, so V has not reached theta when
    the second input makes the slope negative, and the neuron never fires. The rounded quotient
    fl(1 / 49) equals fl(1/49), so a test ``(theta + B) / A <= t_next`` fired at t_next; every
    implementation now tests ``theta + B <= A * t_next``, as the numba and Triton kernels always did."""
    t = torch.tensor([[0.0, 1 / 49]], dtype=torch.float64)
    w = torch.tensor([[49.0, -100.0]], dtype=torch.float64)
    assert 49.0 * (1 / 49) < 1.0  # the premise, in float64
    for backend in ("torch", "numba"):
        assert relpsp_linear(t, w, backend=backend).item() == math.inf, backend
    assert relpsp_linear_ref(t, w).item() == math.inf


def _borderline_rows(rows: int, n_early: int, seed: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 rows whose neuron (the row's own, the diagonal of the output) reaches theta within a
    rounding step of its inhibitory last input: ``n_early`` small inputs (more than one chunk of the
    torch path), then an input at b whose weight is solved so that V(c) = theta, then w = -100 at c.
    Whether it fires depends on the order and rounding of the sums A and B, not on the model."""
    rng = np.random.default_rng(seed)
    if ties:  # times on a grid of 100 values: many inputs share a time
        early_t = np.sort(rng.integers(0, 100, (rows, n_early)) / 1000, 1)
    else:
        early_t = np.sort(np.stack([rng.permutation(100)[:n_early] for _ in range(rows)]) / 1000, 1)
    early_w = rng.integers(-50, 50, (rows, n_early)) / 997
    b = 0.2 + rng.integers(0, 30, rows) / 100
    c = b + rng.integers(1, 30, rows) / 100
    w_b = (1 - (early_w * (c[:, None] - early_t)).sum(1)) / (c - b)
    t = np.concatenate([early_t, b[:, None], c[:, None]], 1)
    w = np.concatenate([early_w, w_b[:, None], np.full((rows, 1), -100.0)], 1)
    return torch.tensor(t), torch.tensor(w)


# 66 early inputs: the numba kernel's radix sort, several chunks of the torch path; 20: rows of at most
# 32 spikes, which the numba kernel sorts by insertion (every 5x5 convolution window takes that path)
@pytest.mark.parametrize("n_early", [66, 20], ids=["radix-sort", "insertion-sort"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct-times", "ties"])
def test_borderline_crossings_are_decided_alike_by_every_cpu_implementation(ties, n_early):
    """The implementations sum A and B in one order (ascending time, ties in input order, no fused
    multiply-add, the torch path's chunks carried in sequence), so even a crossing within a rounding
    step of the next input fires in all or none. Before, the numba kernel fused w t + B (183 and 172 of
    these 1,000 neurons decided otherwise than the reference), the torch path added its carry to each
    chunk's own prefix sums (351, 343), and torch's sort did not keep ties in input order (5, with ties)."""
    t, w = _borderline_rows(1000, n_early, seed=17, ties=ties)
    out = {}
    for impl in ("ref", "torch", "numba"):
        parts = []
        for r0 in range(0, len(t), 250):
            tb, wb = t[r0 : r0 + 250], w[r0 : r0 + 250]
            o = relpsp_linear_ref(tb, wb) if impl == "ref" else relpsp_linear(tb, wb, backend=impl)
            parts.append(o.diagonal())
        out[impl] = torch.cat(parts)
    fired = torch.isfinite(out["ref"])
    assert 0.2 < fired.float().mean() < 0.9  # the rows sit on the boundary: both outcomes occur
    for impl in ("torch", "numba"):
        assert torch.equal(out[impl], out["ref"]), (impl, int((out[impl] != out["ref"]).sum()))


@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_t_max_cut_compares_the_returned_spike_with_t_max_itself(impl):
    """A spike is kept when the returned time (in the input dtype) is at most t_max, compared in float64:
    float32(0.1) > 0.1, so a float32 spike at 1/10 is cut by t_max = 0.1 and kept by t_max =
    float32(0.1); 1.0 is cut by t_max = 0.99999999, which float32 would round up to 1.0. Before, the
    torch path and the reference rounded t_max to the input dtype and the numba kernel did not."""

    def run(t_max, w):
        t, wt = torch.zeros(1, 1), torch.tensor([[w]])
        if impl == "ref":
            return relpsp_linear_ref(t, wt, t_max=t_max).item()
        return relpsp_linear(t, wt, t_max=t_max, backend=impl).item()

    f32_tenth = float(np.float32(0.1))
    assert f32_tenth > 0.1  # the premise
    assert run(0.1, 10.0) == INF
    assert run(f32_tenth, 10.0) == f32_tenth
    assert run(0.99999999, 1.0) == INF
    assert run(1.0, 1.0) == 1.0


def test_reference_twin_with_no_inputs_is_silent():
    for fn in (relpsp_linear_ref, relpsp_linear):
        out = fn(torch.zeros(2, 0), torch.zeros(3, 0))
        assert out.shape == (2, 3)
        assert bool(torch.isinf(out).all())


# --------------------------------------------------------------------------------------------------
# Backward


@pytest.mark.parametrize(("dtype", "w_first"), ROUNDS_ONTO_INPUT)
@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_spike_that_rounds_onto_its_last_causal_input_moves_just_above_it(impl, dtype, w_first):
    """The forward returns the next representable time above the last causal input (one rounding step
    from the exact time), so that the backward's causal set t_i < t_out keeps that input."""
    t = torch.tensor([[0.0, 1.0]], dtype=dtype, requires_grad=True)
    w = torch.tensor([[w_first, 1.0]], dtype=dtype, requires_grad=True)
    assert ((1.0 + 1.0) / (w.detach()[0, 0] + 1.0)).item() == 1.0  # the premise: the closed form rounds onto 1
    if impl == "ref":
        out = relpsp_linear_ref(t, w)
    else:
        out = relpsp_linear(t, w, backend=impl)
    above = torch.nextafter(torch.ones((), dtype=dtype), torch.tensor(INF, dtype=dtype))
    assert out.item() == above.item()
    out.sum().backward()
    w_sum = w_first + 1.0
    np.testing.assert_allclose(t.grad.numpy(), [[w_first / w_sum, 1.0 / w_sum]], rtol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), [[(0.0 - 1.0) / w_sum, 0.0]], atol=1e-6)


@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_the_move_above_the_last_input_respects_t_max(impl):
    """An input at exactly t_max is causal; a spike moved above it lies after t_max and is dropped."""
    t = torch.tensor([[0.0, 1.0]])
    w = torch.tensor([[0.99999994, 1.0]])
    if impl == "ref":
        out = relpsp_linear_ref(t, w, t_max=1.0)
    else:
        out = relpsp_linear(t, w, t_max=1.0, backend=impl)
    assert out.item() == INF


def test_reference_value_is_the_searched_time_even_with_very_large_weights():
    """``relpsp_linear_ref`` adds a term that is zero in value to the searched time; computed as a rounded
    difference it was not zero where one input's weight of order 1e6 cancels against another's in
    float32, and the reference drifted away from the torch backend's time. The term is now exactly zero."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, 6, generator=g)
    w = torch.randn(5, 6, generator=g)
    w[:, 0] *= 1e6
    w[:, 1] = -w[:, 0] + torch.rand(5, generator=g) * 1e-2
    ref = relpsp_linear_ref(t, w)
    assert torch.isfinite(ref).any()
    assert torch.equal(ref, relpsp_linear(t, w, backend="torch"))


@pytest.mark.parametrize("t_max", [INF, 1.5], ids=["no_cut", "t_max1.5"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_ref(backend, dtype, t_max):
    t_np, w_np = dense_case(20, dtype)
    t_in, weight = _t(t_np, dtype), _t(w_np, dtype)
    grad_out = torch.randn(t_np.shape[0], w_np.shape[0], generator=torch.Generator().manual_seed(21), dtype=dtype)
    out, g_in, g_w = _grads(lambda t, w: relpsp_linear(t, w, t_max=t_max, backend=backend), t_in, weight, grad_out)
    ref, r_in, r_w = _grads(lambda t, w: relpsp_linear_ref(t, w, t_max=t_max), t_in, weight, grad_out)
    assert_close("t_out", out, ref, dtype)
    assert_close("grad_t_in", g_in, r_in, dtype, kind="grad")
    assert_close("grad_weight", g_w, r_w, dtype, kind="grad")
    assert g_in.abs().sum() > 0 and g_w.abs().sum() > 0  # the comparison is not between two zero tensors


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_gradient_alone_equals_the_one_computed_with_the_input_gradient(backend, dtype):
    """When the input needs no gradient (a network's first layer) the backward skips the input-gradient
    sums (the numba kernel is compiled without them); the weight gradient stays the same, bit for bit."""
    t_np, w_np = dense_case(22, dtype)
    grad_out = torch.randn(t_np.shape[0], w_np.shape[0], generator=torch.Generator().manual_seed(23), dtype=dtype)
    _, g_in, g_w = _grads(lambda t, w: relpsp_linear(t, w, backend=backend), _t(t_np, dtype), _t(w_np, dtype), grad_out)
    weight = _t(w_np, dtype, grad=True)
    t_in = _t(t_np, dtype)  # requires no gradient
    relpsp_linear(t_in, weight, backend=backend).backward(grad_out)
    assert t_in.grad is None and g_in.abs().sum() > 0
    assert g_w.abs().sum() > 0 and torch.equal(weight.grad, g_w)


@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_grads_match_oracle(impl):
    dtype = torch.float64
    t_np, w_np = dense_case(30, dtype)
    rng = np.random.default_rng(31)
    g_np = rng.normal(size=(t_np.shape[0], w_np.shape[0]))
    exp_in, exp_w = oracle.dense_grads(t_np, w_np, g_np, 1.0, 1.8)
    if impl == "ref":

        def fn(t, w):
            return relpsp_linear_ref(t, w, t_max=1.8)
    else:

        def fn(t, w):
            return relpsp_linear(t, w, t_max=1.8, backend=impl)

    _, g_in, g_w = _grads(fn, _t(t_np, dtype), _t(w_np, dtype), _t(g_np, dtype))
    assert_close("grad_t_in", g_in, exp_in, dtype, kind="grad")
    assert_close("grad_weight", g_w, exp_w, dtype, kind="grad")


@pytest.mark.parametrize("t_max", [INF, 1.7], ids=["no_cut", "t_max1.7"])
@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_gradcheck(impl, t_max):
    t_np, w_np = gradcheck_case(40, t_max)
    t_in = _t(t_np, torch.float64, grad=True)
    weight = _t(w_np, torch.float64, grad=True)

    def fn(t, w):
        if impl == "ref":
            out = relpsp_linear_ref(t, w, t_max=t_max)
        else:
            out = relpsp_linear(t, w, t_max=t_max, backend=impl)
        # Silent outputs are constant (+inf); gradcheck differences need finite values.
        return torch.where(torch.isfinite(out), out, 0.0)

    assert torch.autograd.gradcheck(fn, (t_in, weight), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_and_non_causal_get_exact_zero(backend, dtype):
    # Row 0: no input spikes at all. Row 1: neuron 0 fires at 1.0 from input 0 alone (V = t); input 1
    # arrives exactly at the spike (t_i = t_j: not causal), input 2 later, input 3 never spikes.
    # Neuron 1 never fires (only inhibition). Neuron 2: V = 0.5 t until t = 1, then slope 1.5, so it
    # fires at 4/3 with causal set {0, 1}.
    t_np = [[INF, INF, INF, INF], [0.0, 1.0, 2.0, INF]]
    w_np = [[1.0, -5.0, 3.0, 7.0], [-1.0, -1.0, -1.0, -1.0], [0.5, 1.0, 0.25, 9.0]]
    exp = [[INF, INF, INF], [1.0, INF, 4.0 / 3.0]]
    t_in, weight = _t(t_np, dtype, grad=True), _t(w_np, dtype, grad=True)
    out = relpsp_linear(t_in, weight, backend=backend)
    assert_close("t_out", out, exp, dtype)
    grad_out = _t([[1.0, 2.0, 3.0], [-1.5, 4.0, 0.5]], dtype)
    out.backward(grad_out)
    g_in, g_w = t_in.grad, weight.grad
    assert torch.isfinite(g_in).all() and torch.isfinite(g_w).all()
    assert (g_in[0] == 0).all(), "row without input spikes"
    assert g_in[1, 2] == 0 and g_in[1, 3] == 0, "input later than every spike / silent input"
    assert (g_w[1] == 0).all(), "neuron that never fires"
    assert g_w[0, 1] == 0 and g_w[0, 2] == 0 and g_w[0, 3] == 0, "non-causal synapses of neuron 0"
    assert g_w[2, 2] == 0 and g_w[2, 3] == 0, "non-causal synapses of neuron 2"
    # The causal ones, by hand: neuron 0: W = 1, t_j = 1; neuron 2: W = 1.5, t_j = 4/3.
    exp_in = [[0, 0, 0, 0], [-1.5 * 1.0 / 1.0 + 0.5 * 0.5 / 1.5, 0.5 * 1.0 / 1.5, 0, 0]]
    exp_w = [[-1.5 * (0.0 - 1.0), 0, 0, 0], [0, 0, 0, 0], [0.5 * (0 - 4 / 3) / 1.5, 0.5 * (1 - 4 / 3) / 1.5, 0, 0]]
    assert_close("grad_t_in", g_in, exp_in, dtype, kind="grad")
    assert_close("grad_weight", g_w, exp_w, dtype, kind="grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_zero_for_spikes_cut_by_t_max(backend):
    t_in = _t([[0.0, 0.5]], torch.float64, grad=True)
    weight = _t([[0.5, 0.5], [4.0, 0.0]], torch.float64, grad=True)  # fire at 1.25 (cut) and 0.25
    out = relpsp_linear(t_in, weight, t_max=1.0, backend=backend)
    assert_close("t_out", out, [[INF, 0.25]], torch.float64)
    out.backward(torch.ones_like(out))
    assert (weight.grad[0] == 0).all()
    assert_close("grad_t_in", t_in.grad, [[1.0, 0.0]], torch.float64, kind="grad")


@pytest.mark.parametrize("impl", ["ref", "torch", "numba"])
def test_w_sum_guard(impl):
    # V = 0.5 t until t = 1, then the slope drops to W = 1e-4: the spike comes at t = 1 + 0.5 / 1e-4.
    t_np = [[0.0, 1.0]]
    w_np = [[0.5, -0.4999]]
    w_sum = 0.5 - 0.4999
    t_exp = 1.0 + 0.5 / w_sum
    g_np = [[0.75]]
    assert W_SUM_MIN > w_sum  # the default clamp acts on this neuron

    def run(w_sum_min):
        t_in, weight = _t(t_np, torch.float64, grad=True), _t(w_np, torch.float64, grad=True)
        if impl == "ref":
            out = relpsp_linear_ref(t_in, weight, w_sum_min=w_sum_min)
        else:
            out = relpsp_linear(t_in, weight, w_sum_min=w_sum_min, backend=impl)
        out.backward(_t(g_np, torch.float64))
        return out.detach(), t_in.grad, weight.grad

    exact_in, exact_w = oracle.dense_grads(t_np, w_np, g_np)
    clamp_in, clamp_w = oracle.dense_grads(t_np, w_np, g_np, w_sum_min=W_SUM_MIN)
    np.testing.assert_allclose(clamp_w, exact_w * w_sum / W_SUM_MIN, rtol=1e-9)  # the oracle's guard
    # Forward never changes with the guard; the backward divides by max(W_j, w_sum_min).
    for w_sum_min, e_in, e_w in ((W_SUM_MIN, clamp_in, clamp_w), (1e-6, exact_in, exact_w)):
        out, g_in, g_w = run(w_sum_min)
        assert_close("t_out", out, [[t_exp]], torch.float64)
        assert_close("grad_t_in", g_in, e_in, torch.float64, kind="grad")
        assert_close("grad_weight", g_w, e_w, torch.float64, kind="grad")
    assert abs(run(W_SUM_MIN)[2][0, 0]) < abs(run(1e-6)[2][0, 0]) / 5


@pytest.mark.parametrize("which", ["t_in_only", "weight_only"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_requires_grad(backend, which):
    t_np, w_np = dense_case(50, torch.float64)
    g = _t(np.random.default_rng(51).normal(size=(t_np.shape[0], w_np.shape[0])), torch.float64)
    exp_in, exp_w = oracle.dense_grads(t_np, w_np, g.numpy())
    t_in = _t(t_np, torch.float64, grad=which == "t_in_only")
    weight = _t(w_np, torch.float64, grad=which == "weight_only")
    relpsp_linear(t_in, weight, backend=backend).backward(g)
    if which == "t_in_only":
        assert weight.grad is None
        assert_close("grad_t_in", t_in.grad, exp_in, torch.float64, kind="grad")
    else:
        assert t_in.grad is None
        assert_close("grad_weight", weight.grad, exp_w, torch.float64, kind="grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_layers_match_ref(backend):
    gen = torch.Generator().manual_seed(60)
    t_in = torch.rand(4, 10, generator=gen, dtype=torch.float64)
    t_in[0, :3] = INF
    w1 = (torch.randn(12, 10, generator=gen, dtype=torch.float64) * 0.4 + 0.2).requires_grad_(True)
    w2 = (torch.randn(5, 12, generator=gen, dtype=torch.float64) * 0.3 + 0.15).requires_grad_(True)
    g = torch.randn(4, 5, generator=gen, dtype=torch.float64)

    def net(fn):
        t = t_in.clone().requires_grad_(True)
        out = fn(fn(t, w1), w2)
        out.backward(g)
        grads = (t.grad.clone(), w1.grad.clone(), w2.grad.clone())
        w1.grad = w2.grad = None
        return out.detach(), grads

    out, grads = net(lambda t, w: relpsp_linear(t, w, backend=backend))
    ref, ref_grads = net(lambda t, w: relpsp_linear_ref(t, w))
    assert torch.isfinite(out).sum() >= 5
    assert_close("t_out", out, ref, torch.float64)
    for name, a, e in zip(("grad_t_in", "grad_w1", "grad_w2"), grads, ref_grads):
        assert_close(name, a, e, torch.float64, kind="grad")
        assert e.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# Validation at the public boundary


def _good():
    torch.manual_seed(0)
    return torch.rand(2, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64)


def _bad_case(kind):
    t, w = _good()
    kw = {}
    if kind == "nan_time":
        t[0, 1] = math.nan
    elif kind == "negative_time":
        t[1, 0] = -0.5
    elif kind == "t_in_rank1":
        t = t[0]
    elif kind == "t_in_rank3":
        t = t[None]
    elif kind == "weight_rank3":
        w = w[None]
    elif kind == "weight_mismatch":
        w = torch.rand(4, 5, dtype=torch.float64)
    elif kind == "weight_nan":
        w[0, 0] = math.nan
    elif kind == "dtype_mismatch":
        w = w.float()
    elif kind == "int_times":
        t = torch.zeros(2, 3, dtype=torch.int64)
    elif kind == "not_tensor":
        t = [[0.0, 1.0, 2.0]]
    elif kind.startswith("theta"):
        kw["theta"] = {"theta_zero": 0.0, "theta_negative": -1.0, "theta_nan": math.nan, "theta_inf": INF}[kind]
    elif kind.startswith("t_max"):
        kw["t_max"] = {"t_max_zero": 0.0, "t_max_negative": -1.0, "t_max_nan": math.nan}[kind]
    elif kind == "w_sum_min_zero":
        kw["w_sum_min"] = 0.0
    elif kind == "backend_unknown":
        kw["backend"] = "gpu"
    elif kind == "numba_float16":
        t, w = t.half(), w.half()
        kw["backend"] = "numba"
    return t, w, kw


BAD_LINEAR = {
    "nan_time": r"t_in.*NaN",
    "negative_time": r"t_in.*negative",
    "t_in_rank1": r"t_in must have 2 dimensions",
    "t_in_rank3": r"t_in must have 2 dimensions",
    "weight_rank3": r"weight must have 2 dimensions",
    "weight_mismatch": r"weight has 5 inputs.*t_in has 3",
    "weight_nan": r"weight.*NaN",
    "dtype_mismatch": r"dtype",
    "int_times": r"t_in must be a floating-point",
    "not_tensor": r"t_in must be a torch.Tensor",
    "theta_zero": r"theta",
    "theta_negative": r"theta",
    "theta_nan": r"theta",
    "theta_inf": r"theta",
    "t_max_zero": r"t_max",
    "t_max_negative": r"t_max",
    "t_max_nan": r"t_max",
    "w_sum_min_zero": r"w_sum_min",
    "backend_unknown": r"backend must be one of",
    "numba_float16": r"numba",
}


@pytest.mark.parametrize("kind", list(BAD_LINEAR))
def test_relpsp_linear_rejects_bad_input(kind):
    t, w, kw = _bad_case(kind)
    with pytest.raises(ValueError, match=BAD_LINEAR[kind]):
        relpsp_linear(t, w, **kw)


@pytest.mark.parametrize("kind", ["nan_time", "weight_mismatch", "theta_zero"])
def test_relpsp_linear_ref_rejects_bad_input(kind):
    # The reference twin is public too (relpsp.functional.__all__) and has the same signature.
    t, w, kw = _bad_case(kind)
    with pytest.raises(ValueError, match=BAD_LINEAR[kind]):
        relpsp_linear_ref(t, w, **kw)


def test_inf_t_max_and_zero_times_are_valid():
    t = torch.zeros(1, 2, dtype=torch.float64)
    out = relpsp_linear(t, torch.ones(1, 2, dtype=torch.float64), t_max=INF)
    assert_close("t_out", out, [[0.5]], torch.float64)


def test_causal_rounding_count_script_reports_its_counts(capsys):
    """scripts/causal_rounding_count.py (the rate quoted in docs/ROBUSTNESS.md) runs and counts spikes."""
    import re

    from tests.helpers import load_script

    assert load_script("causal_rounding_count").main(["--images", "4"]) == 0
    m = re.search(
        r"(\d+) output spikes, (\d+) one float above one of their input times, (\d+) at exactly one of their "
        r"input times",
        capsys.readouterr().out,
    )
    assert m is not None and int(m[1]) > 0 and int(m[2]) + int(m[3]) <= int(m[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numba_next_above_is_numpys_nextafter(dtype):
    """The numba kernel's ``_next_above`` (the rounding rule's next float, computed in float64 from the
    format's mantissa bits and smallest exponent) equals ``np.nextafter(x, inf)`` in the format: zero,
    subnormals, the smallest normal, powers of two, ordinary times and the largest finite numbers."""
    pytest.importorskip("numba")
    from relpsp.kernels.cpu_numba import _next_above

    fmt = np.finfo(dtype)
    rng = np.random.default_rng(0)
    xs = [0.0, -0.0, fmt.smallest_subnormal, 3 * fmt.smallest_subnormal, fmt.tiny, fmt.tiny * 1.5, 0.5, 1.0]
    xs += [2.0, 1.0 - fmt.epsneg, 1.0 + fmt.eps, np.nextafter(fmt.max, 0, dtype=dtype)]
    xs += list(rng.uniform(0, 10, 50)) + list(10.0 ** rng.uniform(-30, 30, 50))
    for x in np.asarray(xs, dtype=dtype):
        got = _next_above(float(x), int(fmt.nmant), int(fmt.minexp))
        want = np.nextafter(x, dtype(np.inf))
        assert dtype(got) == want and float(dtype(got)) == got, (x, got, want)


def _dense_fwd(impl):
    return dense_module.relpsp_linear_fwd_torch if impl == "torch" else _numba_fwd


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_forward_weight_sum_is_the_backward_causal_set_near_its_last_input(impl):
    """W_j returned by the forward equals the summed weight of the inputs the backward counts as causal
    (t_i < t_out), on a float32 layer built so that neuron r on row r crosses within a rounding step after
    its second input's time s_r (``crossings_just_after_an_input``). Such crossings round onto s_r; the
    forward moves them above it (on the code before, 551 and 750 of the 999,915 firing neurons failed under
    torch and numba)."""
    t, w, s = crossings_just_after_an_input(1000, seed=3)
    t_out, w_sum = _dense_fwd(impl)(t, w)
    assert_weight_sum_is_causal_mask(t, w, t_out, w_sum)
    diag = t_out.diagonal().double()
    assert torch.isfinite(diag).all()
    above_s = diag == torch.from_numpy(np.nextafter(s, np.float32(np.inf))).double()
    assert int(above_s.sum()) > 500, "the construction must put many crossings within a step of s"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_forward_weight_sum_is_the_backward_causal_set_near_the_next_input(impl, dtype):
    """The other end (``crossings_just_before_the_next_input``): the firing test theta + B <= A t_next can
    pass while the rounded quotient lies after t_next; the forward then returns t_next, whose input stays
    out of W and of the backward's mask. float32 hits it under torch (float32 sums; numba's float64 sums
    decide otherwise), float64 under both (on the code before, 47-56 of the 10^6 neurons failed in each of
    those three cases)."""
    t, w, t_next = crossings_just_before_the_next_input(1000, seed=4, dtype=dtype)
    t_out, w_sum = _dense_fwd(impl)(t, w)
    assert_weight_sum_is_causal_mask(t, w, t_out, w_sum)
    diag = t_out.diagonal().double()
    assert torch.isfinite(diag).all()
    if dtype == torch.float64 or impl == "torch":
        assert int((diag == torch.from_numpy(t_next).double()).sum()) > 25, "the construction must hit the case"


def _numba_fwd(t_in, weight):
    from relpsp.kernels.cpu_numba import linear_fwd

    o, ws = linear_fwd(t_in.numpy(), weight.numpy(), 1.0, math.inf)
    return torch.from_numpy(o), torch.from_numpy(ws)


def test_small_numba_calls_run_single_threaded_and_restore_the_thread_count():
    """Below SERIAL_WORK a kernel call runs on one thread, so its results are those of a one-thread run, bit
    for bit, whatever numba's thread count; that count comes back afterwards, also when the call fails."""
    numba = pytest.importorskip("numba")
    import relpsp.kernels.cpu_numba as cpu_numba
    from relpsp.kernels import load_cpu_kernels

    k = load_cpu_kernels()
    threads = numba.get_num_threads()
    seen = []
    with cpu_numba._threads_for(cpu_numba.SERIAL_WORK - 1):
        seen.append(numba.get_num_threads())
    with cpu_numba._threads_for(cpu_numba.SERIAL_WORK):
        seen.append(numba.get_num_threads())
    assert seen == [1, threads] and numba.get_num_threads() == threads
    with pytest.raises(RuntimeError), cpu_numba._threads_for(1):
        raise RuntimeError("inside")
    assert numba.get_num_threads() == threads

    g = torch.Generator().manual_seed(5)
    t_in = torch.rand(32, 4, generator=g).numpy()  # Yin-Yang's first layer at batch 32: 3,840 < SERIAL_WORK
    weight = (0.5 + torch.rand(30, 4, generator=g)).numpy()
    assert 32 * 4 * 30 < cpu_numba.SERIAL_WORK
    t_out, w_sum = k.linear_fwd(t_in, weight, 1.0, math.inf)
    grad = np.where(np.isfinite(t_out), 1.0, 0.0).astype(np.float32)
    g_in, g_w = k.linear_bwd(grad, t_in, weight, t_out, w_sum, W_SUM_MIN)
    numba.set_num_threads(1)
    try:
        t_out1, w_sum1 = k.linear_fwd(t_in, weight, 1.0, math.inf)
        g_in1, g_w1 = k.linear_bwd(grad, t_in, weight, t_out1, w_sum1, W_SUM_MIN)
    finally:
        numba.set_num_threads(threads)
    for a, b in ((t_out, t_out1), (w_sum, w_sum1), (g_in, g_in1), (g_w, g_w1)):
        np.testing.assert_array_equal(a, b)
