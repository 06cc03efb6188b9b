"""The windowed neuron with a dynamic threshold (``relpsp.window``, a departure from the paper).

Forward against a reference that does not use the closed form: V(t) = sum_i w_i max(0, t - t_i) and
theta(t) = t_end - t evaluated on a fine grid of the window, first grid time with V >= theta (t_end if
none). Gradients by finite differences (float64 ``gradcheck``) where no neuron sits on a window edge.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import relpsp.window
from relpsp.models import build_model
from relpsp.nn import WindowLinear
from relpsp.window import standardized_weight, window_conv2d, window_linear, window_times
from tests.helpers import WINDOW_GRID as GRID
from tests.helpers import load_script
from tests.helpers import window_grid_reference as grid_reference

INF = math.inf


def window_case(seed: int, b: int = 5, n_in: int = 9, n_out: int = 12, t_start: float = 1.0):
    """Inputs in [0, t_start] (some silent, some at t_start exactly), weights giving every regime:
    crossings inside the window, neurons held at t_start, at t_end, and 1 + W <= 0."""
    rng = np.random.default_rng(seed)
    t_in = rng.uniform(0.0, t_start, (b, n_in))
    t_in[rng.random(t_in.shape) < 0.25] = INF
    t_in[0, 0] = t_start
    weight = rng.normal(0.12, 0.35, (n_out, n_in))
    weight[0] = -0.4  # 1 + W <= 0 wherever enough inputs spike: held at t_end
    weight[1] = 3.0  # a large W with early inputs: g(t_start) >= 0, held at t_start
    return t_in, weight


@pytest.mark.parametrize("t_start,t_end", [(1.0, 2.0), (2.0, 2.5), (3.0, 7.0)])
def test_linear_matches_grid_reference(t_start, t_end):
    t_in, weight = window_case(0, t_start=t_start)
    expected = grid_reference(t_in, weight, t_start, t_end)
    got = window_linear(torch.from_numpy(t_in), torch.from_numpy(weight), t_start=t_start, t_end=t_end).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=(t_end - t_start) / (GRID - 1) + 1e-12)
    # Every regime occurs: held at the start, held at the end, and strictly inside.
    assert (got == t_start).sum() >= 3 and (got == t_end).sum() >= 3
    assert ((got > t_start) & (got < t_end)).sum() >= 8


def test_linear_float32_and_all_inputs_spiking():
    t_in, weight = window_case(1)
    t_in = np.where(np.isfinite(t_in), t_in, 0.5)  # the hidden-layer case: every input spiked
    expected = grid_reference(t_in, weight, 1.0, 2.0)
    got = window_linear(
        torch.tensor(t_in, dtype=torch.float32), torch.tensor(weight, dtype=torch.float32), t_start=1.0, t_end=2.0
    )
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1 / (GRID - 1) + 1e-5)


@pytest.mark.parametrize("silent", [0.3, 0.0], ids=["some-silent", "all-spike"])
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 2)], ids=["s1_p0", "s2_p1", "s1_p2"])
def test_conv_is_the_dense_neuron_on_every_window(stride, padding, silent):
    rng = np.random.default_rng(3)
    t = rng.uniform(0.0, 1.0, (2, 2, 6, 5))
    t[rng.random(t.shape) < silent] = INF
    w = rng.normal(0.1, 0.3, (3, 2, 3, 3))
    got = window_conv2d(
        torch.from_numpy(t), torch.from_numpy(w), stride=stride, padding=padding, t_start=1.0, t_end=2.0
    )
    padded = np.pad(t, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=INF)
    h_out, w_out = got.shape[2:]
    for oy in range(h_out):
        for ox in range(w_out):
            patch = padded[:, :, oy * stride : oy * stride + 3, ox * stride : ox * stride + 3].reshape(2, -1)
            exp = grid_reference(patch, w.reshape(3, -1), 1.0, 2.0)
            np.testing.assert_allclose(got[:, :, oy, ox].numpy(), exp, rtol=0, atol=1 / (GRID - 1) + 1e-12)


def test_gradients_match_finite_differences_inside_the_window():
    rng = np.random.default_rng(4)
    t_in = torch.tensor(rng.uniform(0.0, 1.0, (3, 5)), dtype=torch.float64, requires_grad=True)
    weight = torch.tensor(rng.uniform(0.05, 0.3, (4, 5)), dtype=torch.float64, requires_grad=True)
    out = window_linear(t_in, weight, t_start=1.0, t_end=2.0)
    assert ((out > 1.05) & (out < 1.95)).all()  # no neuron near an edge, so the closed form is smooth here
    assert torch.autograd.gradcheck(lambda t, w: window_linear(t, w, t_start=1.0, t_end=2.0), (t_in, weight))
    conv_t = torch.tensor(rng.uniform(0.0, 1.0, (1, 2, 4, 4)), dtype=torch.float64, requires_grad=True)
    conv_w = torch.tensor(rng.uniform(0.02, 0.1, (2, 2, 3, 3)), dtype=torch.float64, requires_grad=True)

    def conv(t, w):
        return window_conv2d(t, w, padding=1, t_start=1.0, t_end=2.0)

    out = conv(conv_t, conv_w)
    assert ((out > 1.0) & (out < 2.0)).all()
    assert torch.autograd.gradcheck(conv, (conv_t, conv_w))


def test_neurons_held_at_an_edge_pass_no_gradient():
    t_in, weight = window_case(5)
    t = torch.tensor(t_in, requires_grad=True)
    w = torch.tensor(weight, requires_grad=True)
    out = window_linear(t, w, t_start=1.0, t_end=2.0)
    held = (out == 1.0) | (out == 2.0)
    assert held.any() and (~held).any()
    g = torch.where(held, torch.ones_like(out), torch.zeros_like(out))
    out.backward(g)
    assert torch.equal(t.grad, torch.zeros_like(t)) and torch.equal(w.grad, torch.zeros_like(w))


def test_analytic_gradient_of_one_neuron():
    """t = (e + sum w t_i) / (1 + W): dt/dt_i = w_i / (1 + W), dt/dw_i = (t_i - t) / (1 + W)."""
    t = torch.tensor([[0.2, 0.6]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.5, 0.25]], dtype=torch.float64, requires_grad=True)
    out = window_linear(t, w, t_start=1.0, t_end=2.0)
    expected = (2.0 + 0.5 * 0.2 + 0.25 * 0.6) / 1.75
    assert float(out.detach()) == pytest.approx(expected, rel=1e-15)
    out.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), [[0.5 / 1.75, 0.25 / 1.75]], rtol=1e-14)
    np.testing.assert_allclose(w.grad.numpy(), [[(0.2 - expected) / 1.75, (0.6 - expected) / 1.75]], rtol=1e-14)


def closed_form_by_autograd(w_sum, wt_sum, t_start, t_end):
    """``window_times``' closed form in plain torch operations, for autograd to differentiate: the oracle of
    the gradient that ``window_times`` writes out itself."""
    den, num = 1.0 + w_sum, t_end + wt_sum
    pos = den > 0
    inside = torch.clamp(num / torch.where(pos, den, torch.ones_like(den)), t_start, t_end)
    held = torch.where(den * t_start - num >= 0, torch.full_like(den, t_start), torch.full_like(den, t_end))
    return torch.where(pos, inside, held)


@pytest.fixture(params=["numba", "torch"])
def window_path(request, monkeypatch):
    """Runs a test on each path of ``window_times``: the numba kernels (the CPU's default where numba is
    installed) and the torch operations (the GPU's, and the CPU's without numba)."""
    if request.param == "numba":
        pytest.importorskip("numba")
        assert relpsp.window._fused_kernels(torch.zeros(1), torch.zeros(1)) is not None
    else:
        monkeypatch.setattr(relpsp.window, "_fused_kernels", lambda *tensors: None)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("every_den_positive", [False, True], ids=["some-1+W<=0", "all-1+W>0"])
def test_window_times_gradient_is_autograds_of_the_closed_form_bit_for_bit(dtype, every_den_positive, window_path):
    t_start, t_end = 1.0, 3.0
    g = torch.Generator().manual_seed(0)
    w_sum = torch.randn(4000, generator=g, dtype=dtype) * 2
    wt_sum = torch.randn(4000, generator=g, dtype=dtype) * 3
    w_sum[:10] = -1.0  # 1 + W = 0: held
    w_sum[10:20], wt_sum[10:20] = 0.0, 0.0  # the quotient is t_end exactly: the clamp passes the gradient there
    w_sum[20:30], wt_sum[20:30] = 1.0, 2 * t_start - t_end  # the quotient is t_start exactly
    if every_den_positive:
        w_sum = w_sum.abs()
    upstream = torch.randn(4000, generator=g, dtype=dtype)
    results = []
    for fn in (window_times, closed_form_by_autograd):
        w, wt = w_sum.clone().requires_grad_(), wt_sum.clone().requires_grad_()
        out = fn(w, wt, t_start, t_end)
        (out * upstream).sum().backward()
        results.append((out.detach(), w.grad, wt.grad))
    (out, grad_w, grad_wt), (ref_out, ref_grad_w, ref_grad_wt) = results
    # every regime is present: inside the window, at either edge exactly, and (unless excluded) 1 + W <= 0
    inside = (out > t_start) & (out < t_end)
    assert inside.any() and (out == t_start).any() and (out == t_end).any()
    assert bool((1.0 + w_sum <= 0).any()) != every_den_positive
    assert (grad_wt[10:30] != 0).all()  # exact equality at an edge passes the closed form's gradient
    assert out.dtype == dtype and torch.equal(out, ref_out)
    assert torch.equal(grad_w, ref_grad_w) and torch.equal(grad_wt, ref_grad_wt)
    assert torch.equal(torch.signbit(grad_w), torch.signbit(ref_grad_w))  # even the zeros' signs
    assert torch.equal(torch.signbit(grad_wt), torch.signbit(ref_grad_wt))


@pytest.mark.parametrize("window", [(1.0, 3.0), (0.1, 0.7)], ids=["whole-edges", "edges-that-round"])
def test_window_times_broadcasts_and_takes_any_upstream_gradient_as_the_closed_form(window):
    """W_j of a layer whose inputs all spiked is one row broadcast over the batch; the upstream gradient of a
    sum is an expanded tensor; edges like 0.1 round to float32. All as autograd through the closed form.
    Unequal shapes take the torch path, numba installed or not."""
    t_start, t_end = window
    g = torch.Generator().manual_seed(3)
    w_row = torch.randn(7, generator=g) * 1.5
    wt_sum = torch.randn(5, 7, generator=g)
    assert relpsp.window._fused_kernels(w_row, wt_sum) is None
    wt_sum[0, 0] = math.nan  # NaN passes through both, forward and back
    results = []
    for fn in (window_times, closed_form_by_autograd):
        w, wt = w_row.clone().requires_grad_(), wt_sum.clone().requires_grad_()
        out = fn(w, wt, t_start, t_end)
        out.sum().backward()
        results.append((out.detach(), w.grad, wt.grad))
    assert results[0][1].shape == (7,) and results[0][2].shape == (5, 7)
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert math.isnan(results[0][0][0, 0]) and math.isnan(results[0][1][0])


@pytest.mark.parametrize(
    "w_dtype,wt_dtype",
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.float32, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
    ids=["f32-f64", "f64-f32", "f32-f16", "f32-bf16"],
)
def test_window_times_of_mixed_dtypes_promotes_as_the_closed_form(w_dtype, wt_dtype):
    """Mixed dtypes take the torch path, numba installed or not, and promote as the closed form."""
    g = torch.Generator().manual_seed(4)
    w_sum = (torch.randn(300, generator=g) * 0.3).to(w_dtype)
    wt_sum = (torch.randn(300, generator=g) * 0.3 + 1).to(wt_dtype)
    assert relpsp.window._fused_kernels(w_sum, wt_sum) is None
    results = []
    for fn in (window_times, closed_form_by_autograd):
        w, wt = w_sum.clone().requires_grad_(), wt_sum.clone().requires_grad_()
        out = fn(w, wt, 0.5, 1.5)
        out.sum().backward()
        results.append((out.detach(), w.grad, wt.grad))
    assert results[0][0].dtype == torch.promote_types(w_dtype, wt_dtype)
    for got, expected in zip(*results):
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_window_times_of_a_row_broadcast_over_channels_last_times_as_autograd():
    """W_j as [1, C, 1, 1] beside channels-last sums [B, C, H, W]: its gradient is summed in autograd's order
    (unequal shapes: the torch path, numba installed or not)."""
    g = torch.Generator().manual_seed(0)
    wt_sum = torch.randn(4, 3, 5, 5, generator=g).to(memory_format=torch.channels_last)
    w_sum = torch.randn(1, 3, 1, 1, generator=g) * 0.5
    assert relpsp.window._fused_kernels(w_sum, wt_sum) is None
    upstream = torch.randn(4, 3, 5, 5, generator=g)
    results = []
    for fn in (window_times, closed_form_by_autograd):
        w = w_sum.clone().requires_grad_()
        fn(w, wt_sum, 1.0, 2.0).backward(upstream)
        results.append(w.grad)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("padding", [0, 1])
def test_channels_last_convolution_gives_the_numbers_of_contiguous_autograd(padding, window_path):
    """Inputs and weights in channels-last memory (every input spiked): outputs and gradients as autograd
    through the closed form on the same tensors, bit for bit (the layout sets the order in which the
    gradient of the broadcast W_j is summed)."""
    g = torch.Generator().manual_seed(6)
    t = torch.rand(8, 32, 8, 8, generator=g).to(memory_format=torch.channels_last)
    w0 = (torch.randn(16, 32, 3, 3, generator=g) * 0.03).to(memory_format=torch.channels_last)
    upstream = torch.randn(8, 16, 8 + 2 * padding - 2, 8 + 2 * padding - 2, generator=g)
    results = []
    for own in (True, False):
        w, t_in = w0.clone().requires_grad_(), t.clone().requires_grad_()
        if own:
            out = window_conv2d(t_in, w, padding=padding, t_start=1.0, t_end=2.0)
        else:  # the code before 7 December 2026: W_j from the kernel's sum, or from a batch of ones
            wt_sum = torch.nn.functional.conv2d(t_in, w, padding=padding)
            if padding:
                ones = t_in.new_ones((1, *t_in.shape[1:]))
                w_sum = torch.nn.functional.conv2d(ones, w, padding=padding).expand_as(wt_sum)
            else:
                w_sum = w.sum((1, 2, 3)).view(1, -1, 1, 1).expand_as(wt_sum)
            out = closed_form_by_autograd(w_sum, wt_sum, 1.0, 2.0)
        out.backward(upstream)
        results.append((out.detach(), t_in.grad, w.grad))
    assert ((results[0][0] > 1.0) & (results[0][0] < 2.0)).any()
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_second_derivatives_are_those_of_the_closed_forms(window_path):
    """The written-out gradients hand over to autograd when a backward builds a graph (create_graph):
    second derivatives, e.g. for a gradient penalty, are those of the plain closed forms. W_j is expanded to
    the sums' shape, as the layers pass it, so that the numba path's forward runs where it is asked for."""
    g = torch.Generator().manual_seed(5)
    t = torch.rand(3, 4, generator=g, dtype=torch.float64)
    raw = torch.randn(5, 4, generator=g, dtype=torch.float64)
    gain = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    results = []
    for times, standardize in (
        (window_times, standardized_weight),
        (closed_form_by_autograd, standardized_by_autograd),
    ):
        r, k = raw.clone().requires_grad_(), gain.clone().requires_grad_()
        w = standardize(r, k, 0.5)
        w_sum, wt_sum = w.sum(1).expand(3, 5), t @ w.T
        assert (relpsp.window._fused_kernels(w_sum, wt_sum) is None) == (window_path == "torch")
        out = times(w_sum, wt_sum, 1.0, 2.0)
        grads = torch.autograd.grad((out**2).sum(), (r, k), create_graph=True)
        second = torch.autograd.grad(sum((x**2).sum() for x in grads), (r, k))
        results.append([x.detach() for x in (out, *grads, *second)])
    assert ((results[0][0] > 1.0) & (results[0][0] < 2.0)).any()
    for got, expected in zip(results[0][:3], results[1][:3]):  # outputs and first derivatives: bit for bit
        assert torch.equal(got, expected)
    for got, expected in zip(results[0][3:], results[1][3:]):  # the graphs sum their terms in another order
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert all(bool(x.abs().sum() > 0) for x in results[0][3:])  # the second derivatives are not all zero


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 2)], ids=["s1_p1", "s2_p2"])
def test_padded_conv_of_inputs_that_all_spiked_takes_w_from_one_image(stride, padding):
    """Every input spiked: W_j (the taps not on the padding) is the same for every image and comes from one
    image's convolution; outputs and gradients are those of each image's own mask."""
    rng = np.random.default_rng(11)
    t = rng.uniform(0.0, 1.0, (3, 2, 6, 5))
    w = rng.normal(0.1, 0.3, (4, 2, 3, 3))
    grads = []
    for own_mask in (False, True):
        t_in = torch.tensor(t, requires_grad=True)
        weight = torch.tensor(w, requires_grad=True)
        if own_mask:
            conv = dict(stride=stride, padding=padding)
            out = closed_form_by_autograd(
                torch.nn.functional.conv2d(torch.ones_like(t_in), weight, **conv),
                torch.nn.functional.conv2d(t_in, weight, **conv),
                1.0,
                2.0,
            )
        else:
            out = window_conv2d(t_in, weight, stride=stride, padding=padding, t_start=1.0, t_end=2.0)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), t_in.grad, weight.grad))
    for got, expected in zip(grads[0], grads[1]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    assert grads[0][0].shape[0] == 3 and (grads[0][0] < 2.0).any()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: window_linear(torch.tensor([[1.5]]), torch.ones(1, 1), t_start=1.0, t_end=2.0), "later than"),
        (lambda: window_linear(torch.zeros(1, 1), torch.ones(1, 1), t_start=2.0, t_end=2.0), "t_end > t_start"),
        (lambda: window_linear(torch.tensor([[math.nan]]), torch.ones(1, 1), t_start=1.0, t_end=2.0), "NaN"),
        (lambda: window_linear(torch.zeros(1, 2), torch.ones(1, 3), t_start=1.0, t_end=2.0), "2 inputs"),
        (
            lambda: window_linear(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.float64), t_start=1.0, t_end=2.0),
            "dtype",
        ),
        (lambda: window_conv2d(torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 2, 2), t_start=1.0, t_end=2.0), "channels"),
        (lambda: window_linear([[0.5]], torch.ones(1, 1), t_start=1.0, t_end=2.0), "t_in must be a torch.Tensor"),
        (
            lambda: window_linear(torch.zeros(2, 3), torch.tensor([[math.nan, 1.0, 1.0]]), t_start=1.0, t_end=2.0),
            "weight holds NaN",
        ),
        (
            lambda: window_conv2d(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 2, 2), stride=0, t_start=1, t_end=2),
            "stride",
        ),
        (
            lambda: window_conv2d(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 2, 2), stride=1.5, t_start=1, t_end=2),
            "stride",
        ),
        (
            lambda: window_conv2d(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 2, 2), padding=-1, t_start=1, t_end=2),
            "padding",
        ),
        (
            lambda: window_conv2d(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 4, 4), t_start=1, t_end=2),
            r"larger than the \(padded\) input 3x3",
        ),
        (lambda: WindowLinear(3, 2, t_start="a", t_end=2.0), "t_start must be"),
        (lambda: WindowLinear(3, 2, t_start=None, t_end=2.0), "t_start must be"),
        (lambda: window_conv2d(torch.zeros(1, 1, 3, 3), 1.0, t_start=1.0, t_end=2.0), "weight must be a torch.Tensor"),
        (
            lambda: window_linear(torch.zeros(2, 3), torch.tensor([[1.0, INF, 1.0]]), t_start=1.0, t_end=2.0),
            "weight holds NaN or infinite",
        ),
        (
            lambda: window_linear(torch.zeros(2, 3), torch.tensor([[1.0, 1.0, -INF]]), t_start=1.0, t_end=2.0),
            "weight holds NaN or infinite",
        ),
        (
            lambda: window_conv2d(
                torch.zeros(1, 1, 3, 3), torch.tensor([[[[0.5, math.nan], [0.5, 0.5]]]]), t_start=1, t_end=2
            ),
            "weight holds NaN or infinite",
        ),
    ],
    ids=[
        "late-input",
        "empty-window",
        "nan",
        "inputs",
        "dtype",
        "channels",
        "list-input",
        "nan-weight",
        "stride-0",
        "stride-float",
        "padding-negative",
        "kernel-too-big",
        "module-text-edge",
        "module-none-edge",
        "float-weight",
        "inf-weight",
        "minus-inf-weight",
        "nan-conv-weight",
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_model_layers_fire_in_consecutive_windows():
    torch.manual_seed(0)
    model = build_model("2C3-P2-6-3", (1, 6, 6), kernel="window", window=0.5, t_in=1.0, init_mean=1.0, init_std=0.3)
    x = torch.rand(4, 1, 6, 6)
    x[x < 0.3] = 0.0  # dark pixels never spike
    h = x
    windows = []
    for mod in model:
        h = mod(h)
        if hasattr(mod, "t_start"):
            windows.append((mod.t_start, mod.t_end))
            assert torch.isfinite(h).all() and (h >= mod.t_start).all() and (h <= mod.t_end).all()
    assert windows == [(1.0, 1.5), (1.5, 2.0), (2.0, 2.5)]
    with pytest.raises(ValueError, match="t_max"):
        build_model("4-2", (4,), kernel="window", t_max=3.0)


def bright_row_task() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A separable toy task on 6x6 images, 128 training and 64 test samples: the class is the bright row."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (192,), generator=g)
    x = 0.3 * torch.rand(192, 1, 6, 6, generator=g)
    x[torch.arange(192), 0, 2 * y, :] = 0.95
    return {"train": (x[:128], y[:128]), "test": (x[128:], y[128:])}


def test_training_a_windowed_cnn_learns_and_round_trips(tmp_path):
    """fit() with kernel window: a separable toy task is learnt, the checkpoint reloads the windowed
    layers with their windows, and the silent-neuron penalty (no silent neurons here) is refused."""
    from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig
    from relpsp.nn import WindowConv2d, WindowLinear
    from relpsp.train import CHECKPOINT_NAME, fit, load_trained

    splits = bright_row_task()
    model_cfg = ModelConfig(
        arch="4C3p1-P2-3", input_shape=(1, 6, 6), kernel="window", window=2.0, init_mean=1.0, init_std=0.5
    )
    cfg = Config(
        model=model_cfg,
        data=DataConfig(dataset="tiny"),
        train=TrainConfig(epochs=24, batch_size=16, lr=3e-3, seed=1, threads=1),
    )
    res = fit(cfg, tmp_path, progress=False, splits=splits, log=lambda s: None)
    assert res["test_accuracy"] >= 0.8  # chance is 1/3
    model, back, _ = load_trained(tmp_path / CHECKPOINT_NAME)
    assert back.model.kernel == "window" and back.model.window == 2.0
    assert isinstance(model[1], WindowConv2d) and isinstance(model[4], WindowLinear)
    assert (model[1].t_start, model[1].t_end, model[4].t_start, model[4].t_end) == (1.0, 3.0, 3.0, 5.0)
    with pytest.raises(ValueError, match="silent_penalty"):
        fit(
            Config(model=model_cfg, data=cfg.data, train=TrainConfig(silent_penalty=1.0)), tmp_path / "x", splits=splits
        )


# --- model.init_centered, and scripts/window_init.py's per-layer measurements ---

window_init = load_script("window_init")


@pytest.mark.parametrize("kernel, theta", [("window", 1.0), ("relpsp", 1.0), ("relpsp", 2.5)])
def test_init_centered_rows_sum_to_the_mean_and_keep_their_spread(kernel, theta):
    torch.manual_seed(0)
    kw = dict(kernel=kernel, init_mean=0.7, init_std=1.5)
    if kernel == "relpsp":
        kw["theta"] = theta
    plain = build_model("2C3-P2-40-30-5", (1, 8, 8), **kw)
    torch.manual_seed(0)
    centred = build_model("2C3-P2-40-30-5", (1, 8, 8), init_centered=True, **kw)
    layers = [m for m in centred if hasattr(m, "weight")]
    assert len(layers) == 4
    for m, p in zip(layers, [m for m in plain if hasattr(m, "weight")]):
        rows, plain_rows = m.weight.detach().flatten(1).double(), p.weight.detach().flatten(1).double()
        target = 0.7 * (theta if kernel == "relpsp" else 1.0)
        assert torch.allclose(rows.sum(1), torch.full((rows.shape[0],), target, dtype=torch.float64), atol=1e-5)
        assert not torch.allclose(plain_rows.sum(1), rows.sum(1), atol=1e-3)  # the plain draw does vary
        # one constant per row: the deviations from the row mean are those of the plain draw
        dev = rows - rows.mean(1, keepdim=True)
        plain_dev = plain_rows - plain_rows.mean(1, keepdim=True)
        assert torch.allclose(dev, plain_dev, atol=1e-6)


def test_init_centered_from_the_config():
    from relpsp.config import config_from_dict
    from relpsp.models import model_from_config

    cfg = config_from_dict(
        {
            "model": dict(
                arch="30-20-4", input_shape=[30], kernel="window", init_mean=0.5, init_std=2.0, init_centered=True
            )
        }
    )
    model = model_from_config(cfg.model)
    for m in (model[1], model[2]):
        assert torch.allclose(m.weight.detach().sum(1), torch.full((m.weight.shape[0],), 0.5), atol=1e-5)


def test_window_init_layer_stats_counts_held_neurons_and_the_signal():
    model = build_model("3-2", (3,), kernel="window", window=1.0, t_in=1.0)
    with torch.no_grad():
        # neuron 0: W = -2 (1 + W <= 0, g(s) < 0: held at the end); neuron 1: W = 0.5 (inside or at s)
        model[1].weight.copy_(torch.tensor([[-1.0, -0.5, -0.5], [0.5, 0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.5, 0.5], [0.0, 0.5, 0.5]])  # input 0 fires at t = 0, or never
    ((at_s, at_e, signal),) = window_init.layer_stats(model, x)
    with torch.no_grad():
        t = model(x)
    assert at_e == pytest.approx(float((t >= 2.0 - 1e-6).float().mean()))
    assert at_e >= 0.5  # neuron 0 is held at the end for both images
    assert at_s == pytest.approx(float((t <= 1.0 + 1e-6).float().mean()))
    assert signal == pytest.approx(float(t.std(0).mean()))
    assert signal > 0  # neuron 1 fires at different times for the two images


# --- model.weight_norm: standardised weights (relpsp.window.standardized_weight) ---


def test_standardized_weight_fixes_the_row_sum_and_the_norm_of_the_rest():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64) * 3 + 1
    gain = torch.tensor([0.5, 1.0, 2.0, -1.5, 0.0], dtype=torch.float64)
    w = standardized_weight(raw, gain, 0.7)
    rows = w.flatten(1)
    assert w.shape == raw.shape
    assert torch.allclose(rows.sum(1), torch.full((5,), 0.7, dtype=torch.float64), atol=1e-12)
    dev = rows - rows.mean(1, keepdim=True)
    assert torch.allclose(dev.norm(dim=1), gain.abs(), atol=1e-12)
    # the direction is the raw row's own, scaled; a constant shift or a scale of a raw row changes nothing
    raw_dev = raw.flatten(1) - raw.flatten(1).mean(1, keepdim=True)
    assert torch.allclose(dev[:4] / gain[:4, None], raw_dev[:4] / raw_dev[:4].norm(dim=1, keepdim=True))
    assert torch.allclose(standardized_weight(2.5 * raw + 4.0, gain, 0.7), w, atol=1e-12)
    # a row of equal raw weights has no direction: every weight is row_sum / n
    flat = standardized_weight(torch.ones(2, 4, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 1.0)
    assert torch.equal(flat, torch.full((2, 4), 0.25, dtype=torch.float64))
    # beside rows that have one, the equal row alone is told apart
    mixed_raw = torch.cat([raw.flatten(1)[:2], torch.full((1, 12), 0.3, dtype=torch.float64)])
    mixed = standardized_weight(mixed_raw, gain[:3], 0.7)
    assert torch.equal(mixed[:2], standardized_weight(mixed_raw[:2], gain[:2], 0.7))
    assert torch.equal(mixed[2], torch.full((12,), 0.7 / 12, dtype=torch.float64))
    # also where the row's mean rounds (0.1 is not a binary fraction): its rounding noise is no direction
    for dtype, value, n in ((torch.float32, 0.1, 10), (torch.float64, 0.1, 3), (torch.float64, 0.7, 7)):
        w = standardized_weight(torch.full((1, n), value, dtype=dtype), torch.ones(1, dtype=dtype), 5.0)
        assert torch.equal(w, torch.full((1, n), 5.0 / n, dtype=dtype)), (dtype, value, n)


def standardized_by_autograd(raw, gain, row_sum):
    """``standardized_weight`` in plain torch operations, for autograd to differentiate: the oracle of the
    gradient that ``standardized_weight`` writes out itself."""
    rows = raw.reshape(raw.shape[0], -1)
    centred = rows - rows.mean(1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True).clamp_min(torch.finfo(raw.dtype).tiny ** 0.5)
    flat = rows.amax(1, keepdim=True) == rows.amin(1, keepdim=True)
    direction = torch.where(flat, torch.zeros_like(centred), centred / norm)
    return (row_sum / rows.shape[1] + gain[:, None] * direction).view_as(raw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", ["varied", "some-equal", "some-zero", "below-the-norm-floor"])
def test_standardized_weight_gradient_is_autograds_bit_for_bit(dtype, rows):
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(40, 3, 3, 3, generator=g, dtype=dtype) * 2 + 0.3
    if rows == "some-equal":
        raw[3], raw[7] = 0.1, 5.0
    elif rows == "some-zero":
        raw[4] = 0.0
    elif rows == "below-the-norm-floor":  # |v_j| under tiny ** 0.5: the clamp holds the norm, no gradient to it
        raw[5] = 0.0
        raw[5, 0, 0, 0] = torch.finfo(dtype).tiny ** 0.5 / 1e3
    gain = torch.randn(40, generator=g, dtype=dtype)
    gain[9] = 0.0  # no gain: a zero gradient to the row's direction (its zeros' signs are autograd's too)
    upstream = torch.randn(raw.shape, generator=g, dtype=dtype)
    upstream[11] = 0.0  # a neuron whose output passed no gradient (held at a window edge all batch)
    results = []
    for fn in (standardized_weight, standardized_by_autograd):
        r, k = raw.clone().requires_grad_(), gain.clone().requires_grad_()
        out = fn(r, k, 0.7)
        out.backward(upstream)
        results.append((out.detach(), r.grad, k.grad))
    for got, expected in zip(*results):
        assert got.dtype == dtype and torch.equal(got, expected)
        assert torch.equal(torch.signbit(got), torch.signbit(expected))  # even the zeros' signs
    # either input alone may need a gradient
    raw_only = raw.clone().requires_grad_()
    standardized_weight(raw_only, gain, 0.7).backward(upstream)
    assert torch.equal(raw_only.grad, results[1][1])
    gain_only = gain.clone().requires_grad_()
    standardized_weight(raw, gain_only, 0.7).backward(upstream)
    assert torch.equal(gain_only.grad, results[1][2])


def test_standardized_weight_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    gain = torch.tensor([0.5, 1.5, -0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, k: standardized_weight(r, k, 0.5), (raw, gain))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: standardized_weight(torch.ones(3), torch.ones(3), 1.0), "expected raw"),
        (lambda: standardized_weight(torch.ones(3, 2), torch.ones(2), 1.0), "expected raw"),
        (lambda: standardized_weight(torch.ones(3, 2), torch.ones(3), math.nan), "row_sum"),
        (lambda: WindowLinear(3, 2, t_start=1.0, t_end=2.0, init_std=0.0, weight_norm=True), "init_std > 0"),
        (lambda: WindowLinear(3, 2, t_start=1.0, t_end=2.0, weight_norm="yes"), "True or False"),
        (lambda: build_model("4-3-2", (4,), weight_norm=True), "kernel 'window' only"),
        # settings of another kernel used to be accepted and ignored
        (lambda: build_model("4-3-2", (4,), window=5.0), r"window \(the layers' time window\) applies to kernel"),
        (lambda: build_model("4-3-2", (4,), kernel="window", kernel_tau=7.0), r"kernel_tau .* kernel 'alpha' only"),
    ],
)
def test_weight_norm_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_weight_norm_layers_use_the_standardised_weights_and_keep_the_row_sum_while_training():
    """A windowed CNN with weight_norm: each layer's forward is the plain windowed layer on
    effective_weight(), whose rows sum to init_mean at the start and still after optimiser steps that
    move every raw weight (without weight_norm the same steps move the sums)."""
    torch.manual_seed(0)
    kw = dict(kernel="window", window=2.0, init_mean=0.5, init_std=1.5)
    model = build_model("3C3-P2-8-4", (1, 6, 6), weight_norm=True, **kw)
    torch.manual_seed(0)
    plain = build_model("3C3-P2-8-4", (1, 6, 6), **kw)
    layers = [m for m in model if hasattr(m, "gain")]
    assert len(layers) == 3 and all(torch.equal(m.gain.detach(), torch.full_like(m.gain, 1.5)) for m in layers)
    assert "weight_norm=True" in repr(model)
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(3))

    def row_sums(net):
        return [m.effective_weight().detach().flatten(1).sum(1) for m in net if hasattr(m, "t_start")]

    for net in (model, plain):
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(-net(x) / 0.3, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for s in row_sums(model):
        assert torch.allclose(s, torch.full_like(s, 0.5), atol=1e-5)
    assert any(not torch.allclose(s, torch.full_like(s, 0.5), atol=1e-2) for s in row_sums(plain))
    # forward = the functional windowed layers on the effective weights
    conv, dense = model[1], model[4]
    h = model[0](x)
    ref = window_conv2d(h, conv.effective_weight(), t_start=conv.t_start, t_end=conv.t_end)
    assert torch.equal(conv(h), ref)
    h = model[3](model[2](ref))
    assert torch.equal(dense(h), window_linear(h, dense.effective_weight(), t_start=dense.t_start, t_end=dense.t_end))


def weight_norm_model_config(arch: str):
    """A windowed network with standardised weights on the 6x6 bright-row task."""
    from relpsp.config import ModelConfig

    return ModelConfig(
        arch=arch, input_shape=(1, 6, 6), kernel="window", window=2.0, init_mean=0.5, init_std=1.5, weight_norm=True
    )


def test_weight_norm_from_the_config_trains_and_round_trips(tmp_path):
    from relpsp.config import Config, DataConfig, TrainConfig
    from relpsp.train import CHECKPOINT_NAME, fit, load_trained

    splits = bright_row_task()
    model_cfg = weight_norm_model_config("4C3p1-P2-3")
    cfg = Config(
        model=model_cfg,
        data=DataConfig(dataset="tiny"),
        train=TrainConfig(epochs=12, batch_size=16, lr=3e-3, tau=0.3, seed=1, threads=1),
    )
    res = fit(cfg, tmp_path, progress=False, splits=splits, log=lambda s: None)
    assert res["test_accuracy"] >= 0.8  # chance is 1/3
    model, back, _ = load_trained(tmp_path / CHECKPOINT_NAME)
    assert back.model.weight_norm is True
    assert model[4].gain is not None and not torch.allclose(model[4].gain, torch.full_like(model[4].gain, 1.5))
    x_test, y_test = splits["test"]
    with torch.no_grad():
        assert float((model(x_test).argmin(1) == y_test).float().mean()) == pytest.approx(res["test_accuracy"])


def test_spike_dropout_deletes_windowed_inputs_and_scales_the_falling_threshold():
    """``train.spike_dropout`` on a windowed network: in a training pass each hooked layer sees a seeded
    subset of its input spikes deleted (+inf: the input never spiked) and fires where the grid reference
    with threshold (1 - p) (e_l - t) fires; the threshold is 1 again after the pass, evaluation sees the
    plain network, and the convolutions are hooked at their own rate."""
    from relpsp.models import model_from_config
    from relpsp.nn import WindowConv2d, WindowLinear
    from relpsp.train.regularisers import SpikeDropout

    torch.manual_seed(0)
    model = model_from_config(weight_norm_model_config("3C3-P2-8-4")).double()
    conv = next(m for m in model if isinstance(m, WindowConv2d))
    hidden, out = (m for m in model if isinstance(m, WindowLinear))
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        clean_in = model[: list(model).index(hidden)](x)  # the hidden layer's input without dropout
    seen: list = []  # registered first, so it runs before the dropout's hook restores the threshold
    hook = hidden.register_forward_hook(lambda m, inp, o: seen.append((inp[0].clone(), m.theta, o.clone())))
    drop = SpikeDropout(model, 0.25)
    assert drop.layers == [hidden, out]
    model.train()
    drop.reseed(0, 0, 0, "cpu")
    with torch.no_grad():
        model(x)
    t_in, theta, o = seen[0]
    dropped = torch.isinf(t_in)
    assert torch.equal(t_in[~dropped], clean_in[~dropped])  # kept spikes keep their times
    assert 0.15 < float(dropped.double().mean()) < 0.35 and theta == pytest.approx(0.75)
    w = hidden.effective_weight().detach().numpy()
    expected = grid_reference(t_in.numpy(), w, hidden.t_start, hidden.t_end, theta=0.75)
    np.testing.assert_allclose(o.numpy(), expected, rtol=0, atol=(hidden.t_end - hidden.t_start) / (GRID - 1) + 1e-9)
    unscaled = grid_reference(t_in.numpy(), w, hidden.t_start, hidden.t_end)
    assert np.abs(o.numpy() - unscaled).max() > 0.05  # the threshold's scale matters
    assert hidden.theta == 1.0 and out.theta == 1.0  # restored after the pass
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # no dropout in evaluation
    drop.close()
    hook.remove()
    conv_seen: list = []  # again registered before the dropout's hooks
    h2 = conv.register_forward_hook(lambda m, inp, o: conv_seen.append((inp[0].clone(), m.theta)))
    both = SpikeDropout(model, 0.3, 0.1)
    assert both.layers == [conv, hidden, out]
    model.train()
    both.reseed(0, 0, 0, "cpu")
    with torch.no_grad():
        model(x)
    conv_in, conv_theta = conv_seen[0]
    assert conv_theta == pytest.approx(0.9) and 0.03 < float(torch.isinf(conv_in).double().mean()) < 0.2
    both.close()
    h2.remove()


def test_windowed_training_with_spike_dropout_is_seeded_and_alpha_is_refused(tmp_path):
    """fit() with kernel window and spike dropout: the same run twice gives the same losses, dropout
    changes them, and the alpha kernel still refuses it."""
    from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig
    from relpsp.train import fit

    splits = bright_row_task()
    model_cfg = weight_norm_model_config("4C3p1-P2-6-3")

    def run(name: str, p: float, p_conv: float = 0.0) -> list[float]:
        train = TrainConfig(
            epochs=2, batch_size=16, lr=3e-3, tau=0.3, seed=1, threads=1, spike_dropout=p, spike_dropout_conv=p_conv
        )
        cfg = Config(model=model_cfg, data=DataConfig(dataset="tiny"), train=train)
        res = fit(cfg, tmp_path / name, progress=False, splits=splits, log=lambda s: None)
        return [r["train_loss"] for r in res["history"]]

    a, b, off = run("a", 0.2, 0.1), run("b", 0.2, 0.1), run("off", 0.0)
    assert a == b and a != off
    alpha = Config(
        model=ModelConfig(arch="16-12-3", input_shape=(1, 4, 4), kernel="alpha"),
        data=DataConfig(dataset="tiny"),
        train=TrainConfig(spike_dropout=0.2, threads=1),
    )
    with pytest.raises(ValueError, match="ReL-PSP and windowed kernels only"):
        fit(alpha, tmp_path / "alpha", splits=splits, progress=False, log=lambda s: None)


# --- train.target_penalty for the windowed neuron: window_held_penalty ---


def test_held_penalty_is_the_negative_potential_at_the_window_end_of_held_neurons():
    """max(0, -V_j(t_end)) summed over the neurons held at t_end (no crossing on the grid reference),
    averaged over samples; neurons inside the window or held at its start add nothing; gradient by
    autograd against its closed form -(t_end - t_i) on the held rows."""
    from relpsp.window import window_held_penalty

    t_in, weight = window_case(3)
    t_start, t_end = 1.0, 2.0
    held_ref = grid_reference(t_in, weight, t_start, t_end) == t_end
    finite = np.isfinite(t_in)
    lead = np.where(finite, t_end - np.nan_to_num(t_in, posinf=0.0), 0.0)  # [B, N_in]: t_end - t_i, 0 if silent
    v_end = lead @ weight.T
    assert (v_end[held_ref] <= 0).all()  # held at the end => V(t_end) <= 0
    expected = np.where(held_ref, np.maximum(0.0, -v_end), 0.0).sum(1).mean()

    w = torch.from_numpy(weight).requires_grad_(True)
    t = torch.from_numpy(t_in)
    t_out = window_linear(t, w, t_start=t_start, t_end=t_end)
    np.testing.assert_array_equal(t_out.detach().numpy() == t_end, held_ref)
    assert held_ref.sum() >= 3 and (t_out.detach().numpy() == t_start).sum() >= 3
    pen = window_held_penalty(t, w, t_out, t_start=t_start, t_end=t_end)
    assert float(pen.detach()) == pytest.approx(expected, rel=1e-12) and expected > 0
    pen.backward()
    active = held_ref & (v_end < 0)
    expected_grad = -(active.T.astype(float) @ lead) / t_in.shape[0]
    np.testing.assert_allclose(w.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-15)
    inside = torch.full_like(t_out, 1.5)  # nothing held: exactly zero
    assert float(window_held_penalty(t, w.detach(), inside, t_start=t_start, t_end=t_end)) == 0.0
    # V(t_end) < 0 does not mean held: 1 + W <= 0 with g(t_start) >= 0 fires at t_start, and adds nothing
    early = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    # beside a neuron held at the end with V(2) = -0.9 (W = -0.6, closed form 1.7 / 0.4 > 2)
    w_early = torch.tensor([[1.2, -2.7], [-0.3, -0.3]], dtype=torch.float64)  # W = -1.5, g(1) = 0.2, V(2) = -0.3
    t_early = window_linear(early, w_early, t_start=t_start, t_end=t_end)
    assert t_early.tolist() == [[t_start, t_end]]
    assert float(window_held_penalty(early, w_early, t_early, t_start=t_start, t_end=t_end)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="t_out"):
        window_held_penalty(t, w.detach(), t_out[:, :3], t_start=t_start, t_end=t_end)
    with pytest.raises(ValueError, match="later than the window's start"):
        window_held_penalty(t + 5.0, w.detach(), t_out, t_start=t_start, t_end=t_end)


def test_target_penalty_pulls_a_windowed_output_held_at_its_end_back_into_the_window():
    """An output neuron held at its window's end for every image gets no gradient from the spike-time
    loss (a class never decided, as in protocol (59)'s deeper MNIST networks). train.target_penalty acts
    on it for the samples of its class only, and a few steps on that term alone make it fire inside."""
    from relpsp.config import ModelConfig
    from relpsp.functional import spike_time_cross_entropy
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SilentPenalty

    torch.manual_seed(0)
    model = model_from_config(
        ModelConfig(arch="36-8-3", input_shape=(1, 6, 6), kernel="window", window=2.0, init_mean=1.0, init_std=0.5)
    )
    out = model[-1]
    with torch.no_grad():
        out.weight[0] = 2.0  # fires at its window's start for every image
        out.weight[1] = 2.0
        out.weight[2] = -0.3  # held at its window's end for every image
    x, y = bright_row_task()["train"]
    t_out = model(x)
    assert (t_out[:, 2] == out.t_end).all() and (t_out[:, :2] == out.t_start).all()
    loss = spike_time_cross_entropy(t_out, y, tau=0.3)
    loss.backward()
    assert float(out.weight.grad[2].abs().sum()) == 0.0  # the loss cannot reach it
    model.zero_grad()

    pen = SilentPenalty(model, target_only=True)
    t_out = model(x)
    total = pen(None, y)
    with torch.no_grad():
        hidden = model[:-1](x)
        v_end = (out.t_end - hidden) @ out.weight[2]  # every hidden neuron fires
        expected = (-v_end).clamp_min(0)[y == 2].sum()
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 0
    total.backward()
    assert float(out.weight.grad[:2].abs().sum()) == 0.0  # the outputs that fire are untouched
    assert float(out.weight.grad[2].abs().sum()) > 0

    opt = torch.optim.SGD([out.weight], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        model(x)
        step = pen(None, y)
        if float(step.detach()) == 0.0:
            break
        (step / len(y)).backward()
        opt.step()
    pen.close()
    with torch.no_grad():
        t_out = model(x)
    assert (t_out[y == 2, 2] < out.t_end).all()  # back inside its window for its own class


def test_windowed_training_takes_the_target_penalty(tmp_path):
    from relpsp.config import Config, DataConfig, TrainConfig
    from relpsp.train import fit

    splits = bright_row_task()
    train = TrainConfig(epochs=2, batch_size=16, lr=3e-3, tau=0.3, seed=1, threads=1, target_penalty=0.01)
    cfg = Config(model=weight_norm_model_config("4C3p1-P2-6-3"), data=DataConfig(dataset="tiny"), train=train)
    res = fit(cfg, tmp_path / "run", progress=False, splits=splits, log=lambda s: None)
    assert res["config"]["train"]["target_penalty"] == 0.01 and len(res["history"]) == 2
    assert all(math.isfinite(r["train_loss"]) for r in res["history"])


def test_window_layers_follow_t_in_and_window():
    """build_model docstring / docs/API.md: with kernel 'window', spiking layer l fires in
    [t_in + (l-1) window, t_in + l window]. Every existing window-model test uses t_in = 1.
    Kills: start computed as 1 + (l-1) window (t_in ignored)."""
    from relpsp.models import build_model, layer_outputs

    torch.manual_seed(0)
    t_in, window = 2.5, 0.5
    model = build_model("2C3-P2-6-3", (1, 6, 6), kernel="window", t_in=t_in, window=window)
    spiking = [m for m in model if hasattr(m, "t_start")]
    assert [(m.t_start, m.t_end) for m in spiking] == [(2.5, 3.0), (3.0, 3.5), (3.5, 4.0)]
    outs = layer_outputs(model, torch.rand(4, 1, 6, 6))
    for m, out in zip(model, outs):
        if hasattr(m, "t_start"):
            fin = out[torch.isfinite(out)]
            assert ((fin >= m.t_start) & (fin <= m.t_end)).all()
