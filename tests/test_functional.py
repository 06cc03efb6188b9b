"""Coding, decoding and the loss of ``relpsp.functional``: values by hand, gradients, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relpsp.functional import decision_margin, first_spike_decode, latency_encode, spike_time_cross_entropy
from tests.helpers import DTYPES, assert_close

INF = math.inf


# --------------------------------------------------------------------------------------------------
# latency_encode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_fires", [False, True], ids=["zero_silent", "zero_fires"])
def test_latency_encode_values(dtype, zero_fires):
    x = torch.tensor([[0.0, 0.25, 0.5], [1.0, 0.75, 0.0]], dtype=dtype)
    t = latency_encode(x, t_max=2.0, zero_fires=zero_fires)
    zero = 2.0 if zero_fires else INF
    assert t.dtype == dtype and t.shape == x.shape
    assert_close("t", t, [[zero, 1.5, 1.0], [0.0, 0.5, zero]], dtype)


def test_latency_encode_default_and_shapes():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 5)
    x[0, 0, 0, 0] = 0.0
    t = latency_encode(x)  # default window 1, intensity 0 never fires
    assert t.shape == x.shape
    assert t[0, 0, 0, 0] == INF
    mask = x > 0
    assert_close("t", t[mask], (1.0 - x)[mask], torch.float32)
    # brighter fires earlier
    flat_x, flat_t = x[mask], t[mask]
    order = flat_x.argsort()
    assert (flat_t[order].diff() <= 0).all()


def test_latency_encode_sends_no_gradient():
    torch.manual_seed(0)
    x = torch.rand(3, 4, requires_grad=True)
    t = latency_encode(x)
    assert not t.requires_grad


@pytest.mark.parametrize(
    "x,kw,match",
    [
        pytest.param(torch.tensor([0.5, 1.5]), {}, r"\[0, 1\]", id="above_one"),
        pytest.param(torch.tensor([-0.1, 0.5]), {}, r"\[0, 1\]", id="negative"),
        pytest.param(torch.tensor([math.nan, 0.5]), {}, r"\[0, 1\]", id="nan"),
        pytest.param(torch.tensor([0, 1]), {}, r"floating-point", id="int_tensor"),
        pytest.param(np.array([0.5]), {}, r"floating-point", id="numpy_array"),
        pytest.param(torch.tensor([0.5]), {"t_max": 0.0}, r"t_max", id="t_max_zero"),
        pytest.param(torch.tensor([0.5]), {"t_max": INF}, r"t_max", id="t_max_inf"),
        pytest.param(
            torch.tensor([0.0]), {"zero_fires": "no"}, r"zero_fires must be True or False", id="zero_fires_str"
        ),
    ],
)
def test_latency_encode_rejects_bad_input(x, kw, match):
    with pytest.raises(ValueError, match=match):
        latency_encode(x, **kw)


# --------------------------------------------------------------------------------------------------
# first_spike_decode


def test_decode_earliest_class_and_silence():
    t_out = torch.tensor(
        [
            [INF, INF, INF],  # nothing fired: no decision
            [2.0, 1.0, 3.0],
            [0.5, INF, 0.5],  # tie: lowest class
            [INF, INF, 7.0],
        ]
    )
    pred, fired = first_spike_decode(t_out)
    assert pred.dtype == torch.int64 and fired.dtype == torch.bool
    assert pred.tolist() == [-1, 1, 0, 2]
    assert fired.tolist() == [False, True, True, True]


def test_decision_margin_cases():
    """The labelled output's lead over the earliest other: its sign says right or wrong, ties are 0,
    a silent labelled output is -inf, a lone labelled spike +inf."""
    t_out = torch.tensor(
        [
            [1.0, 2.5, 3.0],  # right by 1.5
            [2.0, 1.0, INF],  # wrong by 1
            [INF, 1.0, 2.0],  # labelled output silent
            [INF, INF, INF],  # nothing fired: no decision
            [1.0, INF, INF],  # only the labelled output fired
            [1.0, 1.0, 2.0],  # tie
        ]
    )
    m = decision_margin(t_out, torch.tensor([0, 0, 0, 1, 0, 1]))
    assert m.tolist() == [1.5, -1.0, -INF, -INF, INF, 0.0]
    assert decision_margin(torch.tensor([[0.5]]), torch.tensor([0])).tolist() == [INF]  # one output


def test_decision_margin_agrees_with_the_decision_on_random_times():
    """Positive margin <=> decided right (ties aside), and it matches a loop over the other outputs."""
    rng = np.random.default_rng(4)
    t = rng.uniform(0, 1, (60, 5))
    t[rng.random(t.shape) < 0.3] = INF
    y = torch.tensor(rng.integers(0, 5, 60))
    t_out = torch.tensor(t, requires_grad=True)
    m = decision_margin(t_out, y)
    assert not m.requires_grad
    pred, _ = first_spike_decode(t_out.detach())
    for r in range(60):
        others = [t[r, k] for k in range(5) if k != y[r]]
        want = (min(others) - t[r, y[r]]) if np.isfinite(t[r, y[r]]) else -INF
        assert m[r].item() == want
        assert (m[r] > 0).item() == (pred[r] == y[r]).item() or m[r] == 0
    with pytest.raises(ValueError, match="labels outside"):
        decision_margin(t_out, torch.full((60,), 5))
    with pytest.raises(ValueError, match="integer tensor"):
        decision_margin(t_out, y.float())


def test_decode_matches_loop_on_random_times():
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, (50, 10))
    t[rng.random(t.shape) < 0.6] = INF
    t[:5] = INF
    pred, fired = first_spike_decode(torch.tensor(t))
    for r in range(t.shape[0]):
        finite = np.isfinite(t[r])
        assert fired[r] == finite.any()
        assert pred[r] == (int(np.argmin(t[r])) if finite.any() else -1)


@pytest.mark.parametrize(
    "t_out,match",
    [
        pytest.param(torch.zeros(3), r"t_out must have 2 dimensions", id="rank1"),
        pytest.param(torch.zeros(2, 3, dtype=torch.int64), r"floating-point", id="int_tensor"),
        pytest.param(torch.tensor([[math.nan, 1.0]]), r"NaN", id="nan_time"),
    ],
)
def test_decode_rejects_bad_input(t_out, match):
    with pytest.raises(ValueError, match=match):
        first_spike_decode(t_out)


# --------------------------------------------------------------------------------------------------
# spike_time_cross_entropy


def _hand_loss(rows, targets, margin):
    """Cross-entropy of softmax(-t) with silent outputs at (latest finite time in the batch) + margin."""
    finite = [v for row in rows for v in row if math.isfinite(v)]
    t_late = (max(finite) if finite else 0.0) + margin
    losses, grads = [], []
    for row, k in zip(rows, targets):
        t = [v if math.isfinite(v) else t_late for v in row]
        z = sum(math.exp(-v) for v in t)
        p = [math.exp(-v) / z for v in t]
        losses.append(t[k] + math.log(z))
        # dL/dt_c = 1[c = k] - p_c for a neuron that fired; silent neurons have no time to move.
        grads.append([((c == k) - p[c]) if math.isfinite(row[c]) else 0.0 for c in range(len(row))])
    return losses, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("margin", [1.0, 0.25], ids=["margin1", "margin0.25"])
def test_loss_matches_hand_computation(dtype, margin):
    rows = [[1.0, 2.0, INF], [INF, INF, INF], [0.5, 3.0, 1.0], [INF, 0.25, INF]]
    targets = [0, 2, 1, 2]
    losses, grads = _hand_loss(rows, targets, margin)
    t_out = torch.tensor(rows, dtype=dtype, requires_grad=True)
    target = torch.tensor(targets)
    loss = spike_time_cross_entropy(t_out, target, silent_margin=margin)
    assert loss.dtype == dtype and loss.shape == ()
    assert_close("loss", loss, sum(losses) / 4, dtype)
    loss.backward()
    assert_close("grad_t_out", t_out.grad, np.array(grads) / 4, dtype, kind="grad")
    silent = ~torch.isfinite(t_out.detach())
    assert (t_out.grad[silent] == 0).all()  # exactly zero, not small
    assert_close(
        "loss_sum", spike_time_cross_entropy(t_out, target, silent_margin=margin, reduction="sum"), sum(losses), dtype
    )
    per = spike_time_cross_entropy(t_out, target, silent_margin=margin, reduction="none")
    assert_close("loss_none", per, losses, dtype)


def test_loss_all_silent_is_finite_with_zero_gradient():
    t_out = torch.full((3, 4), INF, requires_grad=True)
    loss = spike_time_cross_entropy(t_out, torch.tensor([0, 1, 3]))
    assert torch.isfinite(loss)
    assert_close("loss", loss, math.log(4), torch.float32)  # every output equally (un)likely
    loss.backward()
    assert torch.equal(t_out.grad, torch.zeros_like(t_out))


def test_loss_rewards_earlier_target_spike():
    # dL/dt_target > 0: firing the target earlier lowers the loss; the other firing output is pushed later.
    t_out = torch.tensor([[1.0, 1.5, INF]], requires_grad=True)
    loss = spike_time_cross_entropy(t_out, torch.tensor([1]))
    loss.backward()
    assert t_out.grad[0, 1] > 0 and t_out.grad[0, 0] < 0 and t_out.grad[0, 2] == 0
    earlier = spike_time_cross_entropy(torch.tensor([[1.0, 1.2, INF]]), torch.tensor([1]))
    assert earlier < loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothed_loss_matches_hand_computation(dtype, eps):
    # target q = (1 - e) one-hot + e / K: loss = sum_c q_c (t_c + log z), dL/dt_c = q_c - p_c for a fired output
    rows = [[1.0, 2.0, INF], [0.5, 3.0, 1.0], [INF, 0.25, INF]]
    targets = [0, 1, 2]
    t_late = 3.0 + 1.0
    want_loss, want_grad = 0.0, []
    for row, k in zip(rows, targets):
        t = [v if math.isfinite(v) else t_late for v in row]
        z = sum(math.exp(-v) for v in t)
        q = [(1 - eps) * (c == k) + eps / 3 for c in range(3)]
        want_loss += sum(q[c] * (t[c] + math.log(z)) for c in range(3))
        want_grad.append([(q[c] - math.exp(-t[c]) / z) if math.isfinite(row[c]) else 0.0 for c in range(3)])
    t_out = torch.tensor(rows, dtype=dtype, requires_grad=True)
    loss = spike_time_cross_entropy(t_out, torch.tensor(targets), reduction="sum", label_smoothing=eps)
    assert_close("loss", loss, want_loss, dtype)
    loss.backward()
    assert_close("grad_t_out", t_out.grad, want_grad, dtype, kind="grad")
    plain = spike_time_cross_entropy(t_out.detach(), torch.tensor(targets), reduction="sum")
    assert not torch.isclose(loss.detach(), plain)  # the option changes the loss


def test_label_smoothing_stops_the_push_at_its_lead():
    # With the others tied, the loss is lowest when the target leads by tau * ln(1 + (1 - e) K / e):
    # there its gradient is zero, an earlier target spike is pushed back (dL/dt_target < 0 before, > 0 after).
    eps, k, tau = 0.1, 4, 0.05
    lead = tau * math.log(1 + (1 - eps) * k / eps)
    target = torch.tensor([0])
    for offset, sign in ((0.0, 0), (0.02, 1), (-0.02, -1)):
        t = torch.tensor([[1.0 - lead - offset, 1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
        spike_time_cross_entropy(t, target, tau=tau, label_smoothing=eps).backward()
        g = float(t.grad[0, 0])
        if sign == 0:
            assert abs(g) < 1e-12
        else:
            assert g * sign < 0  # too big a lead: the target is pushed later (gradient < 0 means 'move later')


def _loss_bad(kind):
    t = torch.tensor([[1.0, 2.0], [0.5, INF]])
    target = torch.tensor([0, 1])
    kw = {}
    if kind == "target_float":
        target = target.float()
    elif kind == "target_shape":
        target = torch.tensor([0, 1, 1])
    elif kind == "label_too_large":
        target = torch.tensor([0, 2])
    elif kind == "label_negative":
        target = torch.tensor([-1, 0])
    elif kind == "margin_negative":
        kw["silent_margin"] = -1.0
    elif kind == "margin_inf":
        kw["silent_margin"] = INF
    elif kind == "reduction":
        kw["reduction"] = "max"
    elif kind == "smoothing_one":
        kw["label_smoothing"] = 1.0
    elif kind == "smoothing_nan":
        kw["label_smoothing"] = math.nan
    elif kind == "t_out_rank1":
        t = t[0]
    elif kind == "t_out_nan":
        t[0, 0] = math.nan
    return t, target, kw


BAD_LOSS = {
    "target_float": r"target must be an integer",
    "target_shape": r"target shape",
    "label_too_large": r"labels outside",
    "label_negative": r"labels outside",
    "margin_negative": r"silent_margin",
    "margin_inf": r"silent_margin",
    "reduction": r"reduction",
    "smoothing_one": r"label_smoothing",
    "smoothing_nan": r"label_smoothing",
    "t_out_rank1": r"t_out must have 2 dimensions",
    "t_out_nan": r"t_out.*NaN",
}


@pytest.mark.parametrize("kind", list(BAD_LOSS))
def test_loss_rejects_bad_input(kind):
    t, target, kw = _loss_bad(kind)
    with pytest.raises(ValueError, match=BAD_LOSS[kind]):
        spike_time_cross_entropy(t, target, **kw)


def test_silent_penalty_ignores_inputs_after_t_end():
    """V(t_end) = sum_i w_i max(0, t_end - t_i): an input at 3 arrives after t_end = 1 and adds nothing, so
    the penalty is 1 - 0.1 * 1 = 0.9 and its weight gets no gradient (training's t_end is the batch's
    latest output spike, so later inputs are common)."""
    from relpsp.functional import silent_neuron_penalty

    t_in = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([[0.1, 0.1]], dtype=torch.float64, requires_grad=True)
    pen = silent_neuron_penalty(t_in, w, torch.full((1, 1), math.inf, dtype=torch.float64), t_end=1.0)
    assert pen.item() == pytest.approx(0.9)
    pen.backward()
    assert w.grad is not None and w.grad.tolist() == [[-1.0, 0.0]]


def test_silent_penalty_of_a_strided_padded_convolution_is_the_dense_penalty_on_its_windows():
    """silent_neuron_penalty docstring: 4-D inputs 'as for relpsp_conv2d (with stride and padding)': each
    output position is the dense neuron on its receptive field (padding never spikes). The existing tests
    are dense only. Kills: the convolution of the ramp ignoring the stride."""
    import torch.nn.functional as F

    from relpsp.functional import relpsp_conv2d, silent_neuron_penalty

    g = torch.Generator().manual_seed(5)
    t_in = torch.rand(2, 2, 7, 7, generator=g, dtype=torch.float64) * 2
    t_in[torch.rand(t_in.shape, generator=g, dtype=torch.float64) < 0.2] = math.inf
    w = (torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64) * 0.2 + 0.02).requires_grad_()
    t_out = relpsp_conv2d(t_in, w.detach(), stride=2, padding=1)
    assert torch.isinf(t_out).any() and torch.isfinite(t_out).any()
    pen = silent_neuron_penalty(t_in, w, t_out, t_end=1.5, stride=2, padding=1)
    rows = F.unfold(F.pad(t_in, (1, 1, 1, 1), value=math.inf), 3, stride=2).transpose(1, 2).reshape(-1, 18)
    out_rows = t_out.permute(0, 2, 3, 1).reshape(-1, 3)
    w2 = w.detach().reshape(3, -1).requires_grad_()
    dense = silent_neuron_penalty(rows, w2, out_rows, t_end=1.5) * (out_rows.shape[0] / t_in.shape[0])
    assert pen.item() == pytest.approx(dense.item(), rel=1e-12) and pen.item() > 0
    pen.backward()
    dense.backward()
    torch.testing.assert_close(w.grad.reshape(3, -1), w2.grad)
