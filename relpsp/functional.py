"""Public functional API: exact ReL-PSP layers on spike-time tensors, coding, decoding and losses.

One data type throughout: float spike times, ``[B, N]`` or ``[B, C, H, W]``, ``+inf`` = no spike.
The neuron (Zhang et al., IEEE TNNLS 2021) fires once, at the first time

    V_j(t) = sum_i w_ji * max(0, t - t_i)  reaches  theta,

and is trained with exact spike-time gradients (STDBP); see ``relpsp.core.dense`` for the closed form,
the gradients and the W_j guard. Every function validates its inputs and raises ``ValueError`` naming
the bad argument.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from relpsp._validate import (
    check_finite_positive,
    check_float_tensor,
    check_int_pair,
    check_intensities,
    check_kernel_fits,
    check_non_negative,
    check_spike_times,
    check_t_max,
)
from relpsp.autograd import RelpspConv2dFn, conv_kernel_applies, im2col_rows, relpsp_linear_rows, resolve_backend
from relpsp.core import dense as _dense
from relpsp.core.dense import W_SUM_MIN
from relpsp.kernels import cpu_kernels_fit, load_pool_kernels

__all__ = [
    "decision_margin",
    "first_spike_decode",
    "latency_encode",
    "min_time_pool2d",
    "relpsp_conv2d",
    "relpsp_conv2d_ref",
    "relpsp_linear",
    "relpsp_linear_ref",
    "silent_neuron_penalty",
    "spike_time_cross_entropy",
]

IntPair = int | tuple[int, int]


def _check_layer(t_in: Tensor, weight: Tensor, theta: float, t_max: float, ndim: int) -> None:
    """Checks shared by the dense (``ndim=2``) and convolutional (``ndim=4``) layers: ranks, matching input
    size (dimension 1 of both), dtype and device, finite weights, valid times, theta and t_max."""
    check_float_tensor("t_in", t_in, (ndim,))
    check_float_tensor("weight", weight, (ndim,))
    if weight.shape[1] != t_in.shape[1]:
        if ndim == 2:
            msg = f"weight has {weight.shape[1]} inputs (shape {tuple(weight.shape)}) but t_in has "
            layout = "[N_out, N_in]"
        else:
            msg = f"weight expects {weight.shape[1]} input channels (shape {tuple(weight.shape)}) but t_in has "
            layout = "[C_out, C_in, kh, kw]"
        raise ValueError(f"{msg}{t_in.shape[1]} (shape {tuple(t_in.shape)}); weight must be {layout}")
    _check_common(t_in, weight, theta, t_max)


def _check_linear(t_in: Tensor, weight: Tensor, theta: float, t_max: float) -> None:
    _check_layer(t_in, weight, theta, t_max, 2)


def _check_common(t_in: Tensor, weight: Tensor, theta: float, t_max: float) -> None:
    if weight.dtype != t_in.dtype or weight.device != t_in.device:
        raise ValueError(
            f"weight ({weight.dtype}, {weight.device}) and t_in ({t_in.dtype}, {t_in.device}) "
            "must share dtype and device"
        )
    # A sum is one cheap pass; it is non-finite whenever an element is (or at absurd magnitudes, also bad).
    # min() propagates NaN, so `min >= 0` fails on NaN and negative times. Both tests are read back in one
    # bool(): on a GPU each read waits for the device, and this runs for every layer of every step.
    tests = []
    if weight.numel():
        tests.append(torch.isfinite(weight.sum()))
    if t_in.numel():
        tests.append(t_in.min() >= 0)
    if tests and not bool(torch.stack(tests).all()):
        if weight.numel() and not bool(torch.isfinite(weight.sum())):
            raise ValueError("weight holds NaN or infinite values (or values too large to sum)")
        check_spike_times("t_in", t_in)
    check_finite_positive("theta", theta)
    check_t_max(t_max)


def relpsp_linear(
    t_in: Tensor,
    weight: Tensor,
    *,
    theta: float = 1.0,
    t_max: float = math.inf,
    w_sum_min: float = W_SUM_MIN,
    backend: str = "auto",
) -> Tensor:
    """Exact ReL-PSP dense layer. ``t_in [B, N_in]``, ``weight [N_out, N_in]`` -> ``t_out [B, N_out]``.

    ``t_max``: spikes later than it are dropped (+inf). ``w_sum_min``: lower clamp of W_j in the backward
    only. ``backend``: ``"auto"``, ``"torch"``, ``"numba"`` or ``"triton"`` (see ``relpsp.autograd``).
    """
    _check_linear(t_in, weight, theta, t_max)
    check_finite_positive("w_sum_min", w_sum_min)
    return relpsp_linear_rows(t_in, weight, theta, t_max, w_sum_min, backend)


def relpsp_linear_ref(
    t_in: Tensor,
    weight: Tensor,
    *,
    theta: float = 1.0,
    t_max: float = math.inf,
    w_sum_min: float = W_SUM_MIN,
) -> Tensor:
    """Reference twin of ``relpsp_linear`` (same checks; autograd through the closed form; memory
    O(B N_in N_out)). See ``relpsp.core.dense.relpsp_linear_ref``."""
    _check_linear(t_in, weight, theta, t_max)
    check_finite_positive("w_sum_min", w_sum_min)
    return _dense.relpsp_linear_ref(t_in, weight, theta=theta, t_max=t_max, w_sum_min=w_sum_min)


def _im2col(t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
    """``[B, C, H, W]`` -> rows ``[B * L, C * kh * kw]`` of receptive fields; padding never spikes."""
    if padding != (0, 0):
        t_in = F.pad(t_in, (padding[1], padding[1], padding[0], padding[0]), value=math.inf)
    b, _c, h, w = t_in.shape
    check_kernel_fits(kernel, h, w)
    h_out = (h - kernel[0]) // stride[0] + 1
    w_out = (w - kernel[1]) // stride[1] + 1
    rows = im2col_rows(t_in, kernel, stride)
    return rows, (b, h_out, w_out)


def _check_conv(t_in: Tensor, weight: Tensor, theta: float, t_max: float) -> None:
    _check_layer(t_in, weight, theta, t_max, 4)
    if weight.shape[0] == 0 or weight.shape[1] == 0:  # an empty kernel has a message of its own
        raise ValueError(f"weight [C_out, C_in, kh, kw] needs C_out, C_in >= 1, got {tuple(weight.shape)}")


def _conv(t_in, weight, stride, padding, linear) -> Tensor:
    rows, (b, h_out, w_out) = _im2col(
        t_in,
        (weight.shape[2], weight.shape[3]),
        check_int_pair("stride", stride, 1),
        check_int_pair("padding", padding, 0),
    )
    t_rows = linear(rows, weight.reshape(weight.shape[0], -1))
    return t_rows.reshape(b, h_out, w_out, weight.shape[0]).permute(0, 3, 1, 2)


def relpsp_conv2d(
    t_in: Tensor,
    weight: Tensor,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    theta: float = 1.0,
    t_max: float = math.inf,
    w_sum_min: float = W_SUM_MIN,
    backend: str = "auto",
) -> Tensor:
    """Exact ReL-PSP convolution: the dense neuron on every receptive field with shared weights.

    ``t_in [B, C_in, H, W]``, ``weight [C_out, C_in, kh, kw]`` -> ``[B, C_out, H_out, W_out]``. The causal
    set is per output position; padded positions never spike.
    """
    _check_conv(t_in, weight, theta, t_max)
    check_finite_positive("w_sum_min", w_sum_min)
    kernel = (weight.shape[2], weight.shape[3])
    stride_hw, padding_hw = check_int_pair("stride", stride, 1), check_int_pair("padding", padding, 0)
    padded_hw = (t_in.shape[2] + 2 * padding_hw[0], t_in.shape[3] + 2 * padding_hw[1])
    check_kernel_fits(kernel, *padded_hw)
    if resolve_backend(backend, t_in) == "numba":
        t_pad = t_in
        if padding_hw != (0, 0):
            t_pad = F.pad(t_in, (padding_hw[1], padding_hw[1], padding_hw[0], padding_hw[0]), value=math.inf)
        image_sort = conv_kernel_applies(padded_hw, kernel)
        t_rows, _ = RelpspConv2dFn.apply(
            t_pad.contiguous(), weight, stride_hw, float(theta), float(t_max), float(w_sum_min), image_sort
        )
        h_out = (padded_hw[0] - kernel[0]) // stride_hw[0] + 1
        w_out = (padded_hw[1] - kernel[1]) // stride_hw[1] + 1
        return t_rows.reshape(t_in.shape[0], h_out, w_out, weight.shape[0]).permute(0, 3, 1, 2)
    return _conv(
        t_in,
        weight,
        stride,
        padding,
        lambda r, w: relpsp_linear_rows(r, w, theta, t_max, w_sum_min, backend),
    )


def relpsp_conv2d_ref(
    t_in: Tensor,
    weight: Tensor,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    theta: float = 1.0,
    t_max: float = math.inf,
    w_sum_min: float = W_SUM_MIN,
) -> Tensor:
    """Reference twin of ``relpsp_conv2d`` (autograd through ``relpsp_linear_ref``)."""
    _check_conv(t_in, weight, theta, t_max)
    check_finite_positive("w_sum_min", w_sum_min)
    return _conv(
        t_in,
        weight,
        stride,
        padding,
        lambda r, w: _dense.relpsp_linear_ref(r, w, theta=theta, t_max=t_max, w_sum_min=w_sum_min),
    )


def min_time_pool2d(t: Tensor, kernel_size: IntPair, stride: IntPair | None = None) -> Tensor:
    """Max-pooling of activity in time: the earliest spike of each window wins, and gets the gradient.

    ``[B, C, H, W]`` -> ``[B, C, H_out, W_out]``; a window with no spike gives +inf. Ties go to the
    first position in row-major order.
    """
    check_float_tensor("t", t, (4,))
    check_spike_times("t", t)
    k = check_int_pair("kernel_size", kernel_size, 1)
    s = k if stride is None else check_int_pair("stride", stride, 1)
    if t.shape[2] < k[0] or t.shape[3] < k[1]:
        raise ValueError(f"kernel_size {k} is larger than the input {t.shape[2]}x{t.shape[3]}")
    if cpu_kernels_fit(t):
        return _MinTimePool.apply(t, k, s)  # the same numbers in one pass each way
    return _min_time_pool_torch(t, k, s)


def _min_time_pool_torch(t: Tensor, k: tuple[int, int], s: tuple[int, int]) -> Tensor:
    out = -F.max_pool2d(-t, k, s)
    # A window without spikes passes no gradient (max_pool2d would route it to some silent input).
    return torch.where(torch.isfinite(out), out, out.detach())


class _MinTimePool(torch.autograd.Function):
    """``_min_time_pool_torch`` by the numba kernels of ``relpsp.kernels.pool_numba``: bit for bit its
    outputs and gradients. Only the winners' positions are kept for the backward (so the input and the
    output may be changed in place afterwards, as with the torch path); a backward asked to
    ``create_graph`` routes the gradient with torch's ``scatter_add``, differentiable in the gradient."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, k: tuple[int, int], s: tuple[int, int]) -> Tensor:
        b, c, h, w = t.shape
        out = t.new_empty((b, c, (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1))
        idx = torch.empty(out.shape, dtype=torch.int64)
        planes = t.detach().contiguous().view(b * c, h, w).numpy()
        flat_out, flat_idx = (x.view(b * c, *out.shape[2:]).numpy() for x in (out, idx))
        load_pool_kernels().min_pool_fwd(planes, *k, *s, flat_out, flat_idx)
        ctx.plane = (b, c, h, w)
        ctx.input = t  # for create_graph only: what the gradient depends on (its values are not read)
        ctx.save_for_backward(idx)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (idx,) = ctx.saved_tensors
        b, c, h, w = ctx.plane
        grad_in = torch.zeros((b * c, h * w), dtype=grad.dtype)
        if torch.is_grad_enabled():  # create_graph: the same sums by torch operations, differentiable in grad
            winners = idx.view(b * c, -1)
            # a silent window adds -0 (anywhere), the sum's neutral element; negated after the where, as the
            # torch path negates, so that second derivatives keep its signs of zero too
            negated = torch.where(winners >= 0, grad.reshape(b * c, -1), 0.0).neg()
            routed = -grad_in.scatter_add(1, winners.clamp_min(0), negated).view(b, c, h, w)
            return _ZeroSlope.apply(routed, ctx.input), None, None
        flat = (x.contiguous().view(b * c, *x.shape[2:]).numpy() for x in (grad, idx))
        load_pool_kernels().min_pool_bwd(*flat, grad_in.numpy())
        return grad_in.view(b, c, h, w), None, None


class _ZeroSlope(torch.autograd.Function):
    """``x`` unchanged, depending on ``t`` with derivative -0 (the pooling's gradient is piecewise constant in
    its input; -0 as the torch path's negation gives it), so a gradient taken with create_graph can be
    differentiated with respect to the pooled input, as through ``-max_pool2d(-t)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, t: Tensor) -> Tensor:
        ctx.like = (t.shape, t.dtype, t.device)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        shape, dtype, device = ctx.like
        return grad, torch.zeros(shape, dtype=dtype, device=device).neg_()


def latency_encode(x: Tensor, *, t_max: float = 1.0, zero_fires: bool = False) -> Tensor:
    """Intensity-to-latency coding: ``x`` in [0, 1] -> ``t = t_max * (1 - x)`` (brighter fires earlier).

    With ``zero_fires=False`` (the default) an intensity of exactly 0 gives no spike (+inf), so dark
    pixels cost no synaptic events; with ``True`` it fires at ``t_max``. Any shape; no gradient to ``x``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    check_finite_positive("t_max", t_max)
    if not isinstance(zero_fires, bool):  # "no" would be truthy
        raise ValueError(f"zero_fires must be True or False, got {zero_fires!r}")
    check_intensities(x, "x must hold intensities")
    x = x.detach()
    t = t_max * (1.0 - x)
    if not zero_fires:
        t = torch.where(x > 0, t, math.inf)
    return t


def first_spike_decode(t_out: Tensor) -> tuple[Tensor, Tensor]:
    """Class of the earliest output spike. ``t_out [B, K]`` -> ``(pred [B] long, fired [B] bool)``.

    ``pred`` is -1 where no output neuron fired (no decision: count it as wrong). Ties go to the
    lowest class index.
    """
    check_float_tensor("t_out", t_out, (2,))
    if t_out.shape[1] == 0:
        raise ValueError(f"t_out has no output neurons (shape {tuple(t_out.shape)}); need [B, K] with K >= 1")
    check_spike_times("t_out", t_out)
    fired = torch.isfinite(t_out).any(1)
    pred = torch.where(fired, t_out.argmin(1), -1)
    return pred, fired


def _check_outputs_and_target(t_out: Tensor, target: Tensor) -> None:
    """``t_out [B, K]`` valid output spike times (K >= 1) and ``target [B]`` integer labels in [0, K)."""
    check_float_tensor("t_out", t_out, (2,))
    if t_out.shape[1] == 0:
        raise ValueError(f"t_out has no output neurons (shape {tuple(t_out.shape)}); need [B, K] with K >= 1")
    check_spike_times("t_out", t_out)
    if not isinstance(target, Tensor) or target.dtype not in (torch.int64, torch.int32):
        raise ValueError("target must be an integer tensor of class indices")
    if target.shape != t_out.shape[:1]:
        raise ValueError(f"target shape {tuple(target.shape)} must be [B] = [{t_out.shape[0]}]")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= t_out.shape[1]):
        raise ValueError(f"target holds labels outside [0, {t_out.shape[1] - 1}]")


def decision_margin(t_out: Tensor, target: Tensor) -> Tensor:
    """How far ahead of the other outputs the labelled one spikes: ``min_{k != y} t_k - t_y`` per sample,
    ``t_out [B, K]``, ``target [B]`` -> ``[B]`` (no gradient). Positive: decided right, with that much
    time to spare (timing noise smaller than it cannot change the decision); negative: decided wrong;
    0: a tie (``first_spike_decode`` gives the lowest index). ``+inf`` where only the labelled output
    fired (or K = 1 and it fired), ``-inf`` where it did not fire (no decision counts as wrong).

    Set beside the loss's ``tau``: ``spike_time_cross_entropy`` stops pushing a sample once its margin
    is several ``tau``."""
    _check_outputs_and_target(t_out, target)
    t = t_out.detach()
    y = target.long()[:, None]
    t_right = t.gather(1, y)[:, 0]
    t_other = t.scatter(1, y, math.inf).min(1).values
    margin = t_other - t_right
    return torch.where(torch.isfinite(t_right), margin, -math.inf)


def spike_time_cross_entropy(
    t_out: Tensor,
    target: Tensor,
    *,
    tau: float = 1.0,
    silent_margin: float = 1.0,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of softmax(-t_out / tau) against class labels. ``t_out [B, K]``, ``target [B]`` (long).

    ``tau`` is the time scale of the softmax: a margin of ``tau`` between the target's spike and the others'
    is worth a factor e in probability. Smaller values reach a confident decision with smaller time
    differences, so training does not push the other outputs to ever later times (see docs/RESULTS.md).

    Outputs that never fire (+inf) are treated as firing at ``t_late + silent_margin``, where ``t_late``
    is the latest finite output time in the batch (detached; 0 if nothing fired). This keeps the loss
    finite, gives silent outputs a small but non-zero probability, and sends no gradient to them (a
    silent neuron has no spike time to move); the gradient still flows to every output that fired.

    ``label_smoothing`` = e replaces the one-hot target with (1 - e) one-hot + e / K on every class, so
    the loss stops rewarding a target spike ever earlier than the rest once its lead is about
    tau * ln(1 + (1 - e) * K / e) (a training choice; the network and its decision are unchanged).
    """
    _check_outputs_and_target(t_out, target)
    check_non_negative("silent_margin", silent_margin)
    check_finite_positive("tau", tau)
    smoothing = check_non_negative("label_smoothing", label_smoothing)
    if smoothing >= 1:
        raise ValueError(f"label_smoothing must be < 1, got {label_smoothing!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if reduction == "mean" and t_out.shape[0] == 0:
        raise ValueError("the mean loss of an empty batch (B = 0) is undefined; use reduction='sum' or 'none'")
    fired = torch.isfinite(t_out)
    with torch.no_grad():
        finite = t_out[fired]
        t_late = (finite.max() if finite.numel() else t_out.new_zeros(())) + silent_margin
    t = torch.where(fired, t_out, t_late)
    return F.cross_entropy(-t / tau, target.long(), reduction=reduction, label_smoothing=smoothing)


def silent_neuron_penalty(
    t_in: Tensor,
    weight: Tensor,
    t_out: Tensor,
    *,
    t_end: float,
    theta: float = 1.0,
    stride: IntPair = 1,
    padding: IntPair = 0,
) -> Tensor:
    """Mean over samples of sum_j max(0, theta - V_j(t_end)) over the neurons j that did not fire.

    A silent neuron has no spike time, so spike-time losses send it no gradient and it may never fire
    again (a "dead" neuron). This term gives it one: V_j(t_end) = sum_i w_ji max(0, t_end - t_i) is linear
    in the weights and inputs, and its gradient raises the weights of the inputs that arrived before
    ``t_end`` until the neuron reaches threshold by then. Neurons that fired contribute nothing.
    ``t_in``/``weight``/``t_out`` as for ``relpsp_linear`` (2-D) or ``relpsp_conv2d`` (4-D, with
    ``stride`` and ``padding``).
    """
    check_finite_positive("t_end", t_end)
    if isinstance(t_in, Tensor) and t_in.dim() == 4:
        _check_conv(t_in, weight, theta, math.inf)
        (sh, sw), (ph, pw) = check_int_pair("stride", stride, 1), check_int_pair("padding", padding, 0)
        h, w = t_in.shape[2] + 2 * ph, t_in.shape[3] + 2 * pw
        check_kernel_fits((weight.shape[2], weight.shape[3]), h, w)
        expected: tuple[int, ...] = (
            t_in.shape[0],
            weight.shape[0],
            (h - weight.shape[2]) // sh + 1,
            (w - weight.shape[3]) // sw + 1,
        )
    else:
        _check_linear(t_in, weight, theta, math.inf)
        expected = (t_in.shape[0], weight.shape[0])
    check_float_tensor("t_out", t_out, (t_in.dim(),))
    check_spike_times("t_out", t_out)
    if tuple(t_out.shape) != expected:
        raise ValueError(f"t_out has shape {tuple(t_out.shape)}; t_in and weight give outputs of shape {expected}")
    silent = ~torch.isfinite(t_out)
    if not bool(silent.any()):
        return t_out.new_zeros(())
    ramp = torch.where(torch.isfinite(t_in), (t_end - t_in).clamp_min(0), 0)
    if t_in.dim() == 2:
        v_end = ramp @ weight.t()
    else:
        v_end = F.conv2d(ramp, weight, stride=stride, padding=padding)
    return torch.where(silent, (theta - v_end).clamp_min(0), 0).sum() / max(t_out.shape[0], 1)
