"""Departure from the paper: ReL-PSP neurons in per-layer time windows with a dynamic threshold.

After the same group's later work (Wei et al., ICCV 2023); not the model of Zhang et al. 2021, and
reported apart from it. Spiking layer l (1-based) may fire only in its own window [s_l, e_l] and all of
its inputs fired in the window before (the encoded input in [0, t_in]), so every input is causal and no
causal-set search is needed. With ``T`` the window length, ``s_l = t_in + (l - 1) T`` and
``e_l = s_l + T``. Neuron j, for t in its window:

    V_j(t) = sum_i w_ji (t - t_i)        over the inputs that spiked (all at t_i <= s_l)
    theta(t) = e_l - t                   a threshold that falls to 0 at the window's end
    g(t) = V_j(t) - theta(t) = (1 + W_j) t - (e_l + sum_i w_ji t_i),     W_j = sum_i w_ji

t_j is the first t in [s_l, e_l] with g(t) >= 0, and a neuron whose g stays negative fires at e_l: every
neuron fires exactly once. g is linear in t, so

    1 + W_j > 0:   t_j = clamp((e_l + sum_i w_ji t_i) / (1 + W_j), s_l, e_l)
    1 + W_j <= 0:  t_j = s_l if g(s_l) >= 0, else e_l.

Gradients are those of this closed form (written out in ``_WindowTimes`` with autograd's arithmetic):
inside the window dt_j/dt_i = w_ji / (1 + W_j) and dt_j/dw_ji = (t_i - t_j) / (1 + W_j), ReL-PSP's STDBP
with every input causal and the threshold folded in; a neuron held at s_l or e_l passes none (at exact
equality, as for a row of zero weights whose closed form is e_l itself, the clamp passes the closed form's
gradient). A layer is one matrix product (or convolution) of the input times and one of the spike mask, in
plain torch on any device: much faster than the exact causal model. On the CPU, with numba installed, the
closed form and its gradient each run as one pass (``relpsp.kernels.window_numba``), bit for bit the torch
operations' results; a backward that builds a graph (``create_graph``) hands over to autograd.

Optional weight standardisation (``standardized_weight``, a further departure of ours, not in Wei et al.):
in the earliness ``a = (e_l - t) / T`` of a spike within its window the layer computes
``a_j = clamp((W_j + z_j) / (1 + W_j), 0, 1)`` with ``z_j = sum_i w_ji a_i``, so the summed weight W_j
sets both the neuron's resting point and its gain. Left free, training moves W_j until most neurons of a
deep network are held at an edge of their window (and pass no gradient); standardisation fixes it.

The event-driven simulator (``relpsp.sim``, an independent float64 implementation, also on a clocked time
grid) and the cost model run these networks; the NIR export refuses them (NIR's neuron models have no
falling threshold or forced spike at a window's end).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from relpsp._validate import check_finite, check_int_pair, check_kernel_fits, check_spike_times
from relpsp.kernels import cpu_kernels_fit, load_window_kernels

__all__ = ["standardized_weight", "window_conv2d", "window_held_penalty", "window_linear", "window_times"]


def _check_window(t_in: Tensor, weight: Tensor, t_start: float, t_end: float, ndim: int) -> bool:
    """Refuses bad arguments; returns whether every input spiked (no +inf in ``t_in``)."""
    for name, x in (("t_in", t_in), ("weight", weight)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if t_in.ndim != ndim or weight.ndim != ndim:
        raise ValueError(f"expected {ndim}-D t_in and weight, got shapes {tuple(t_in.shape)} and {tuple(weight.shape)}")
    if not t_in.is_floating_point() or t_in.dtype != weight.dtype:
        raise ValueError(f"t_in and weight must share a float dtype, got {t_in.dtype} and {weight.dtype}")
    if t_in.device != weight.device:
        raise ValueError(f"t_in and weight must be on the same device, got {t_in.device} and {weight.device}")
    check_finite("t_start", t_start)
    check_finite("t_end", t_end)
    if weight.numel() and not all(math.isfinite(float(v)) for v in torch.aminmax(weight.detach())):
        raise ValueError("weight holds NaN or infinite values")  # aminmax propagates NaN: one pass
    if not t_end > t_start:
        raise ValueError(f"the window must have t_end > t_start, got [{t_start}, {t_end}]")
    t = t_in.detach()
    check_spike_times("t_in", t)  # >= 0 or +inf, as everywhere in the package: no spike is t = +inf
    if t.numel() == 0:
        return True
    latest = float(t.max())
    all_spiked = latest < math.inf
    if not all_spiked:
        latest = float(torch.where(t < math.inf, t, -math.inf).max())
    # Rounding slack: a float32 window edge may lie an ulp above the float64 one.
    if latest > t_start + 1e-6 * max(1.0, abs(t_start)):
        raise ValueError(
            f"an input spike at t = {latest:.6g} is later than the window's start {t_start:.6g}: every input "
            "must fire before the layer's window opens"
        )
    return all_spiked


def _fused_kernels(w_sum: Tensor, wt_sum: Tensor) -> ModuleType | None:
    """``relpsp.kernels.window_numba`` where it can run these tensors (CPU, float32 or float64, numba
    installed, one dtype and one shape), else None: the torch path, which promotes mixed dtypes and sums a
    broadcast W_j's gradient in torch's order (the layers pass W_j already expanded to the sums' shape)."""
    same = w_sum.dtype == wt_sum.dtype and w_sum.shape == wt_sum.shape
    return load_window_kernels() if same and cpu_kernels_fit(w_sum) and cpu_kernels_fit(wt_sum) else None


class _WindowTimes(torch.autograd.Function):
    """The closed form of ``window_times`` with its gradient written out: on the CPU with numba one pass each
    way (``relpsp.kernels.window_numba``), elsewhere autograd's own steps through ``_closed_form``; both
    give autograd's numbers bit for bit."""

    @staticmethod
    def forward(ctx: Any, w_sum: Tensor, wt_sum: Tensor, t_start: float, t_end: float) -> Tensor:
        ctx.window = (t_start, t_end)
        ctx.kernels = kernels = _fused_kernels(w_sum, wt_sum)
        if kernels is not None:
            w, wt = (x.detach().contiguous() for x in (w_sum, wt_sum))
            out = torch.empty_like(wt)
            kernels.window_times_fwd(
                w.view(-1).numpy(), wt.view(-1).numpy(), *_scalars(wt, ctx.window), out.view(-1).numpy()
            )
            ctx.save_for_backward(w_sum, wt_sum)
            return out
        out, quotient, safe_den, pos = _closed_form(w_sum, wt_sum, t_start, t_end)
        ctx.save_for_backward(w_sum, wt_sum, quotient, safe_den, pos)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        t_start, t_end = ctx.window
        if torch.is_grad_enabled():  # create_graph: autograd's own gradient, itself differentiable
            return (*_autograd_grads(_window_times_by_autograd, *ctx.saved_tensors[:2], grad, *ctx.window), None, None)
        if ctx.kernels is not None:
            w, wt = (x.detach().contiguous() for x in ctx.saved_tensors)
            grad = grad.contiguous()
            grad_w, grad_wt = torch.empty_like(w), torch.empty_like(wt)
            flat = [x.view(-1).numpy() for x in (w, wt, grad)]
            ctx.kernels.window_times_bwd(
                *flat, *_scalars(wt, ctx.window), grad_w.view(-1).numpy(), grad_wt.view(-1).numpy()
            )
            return grad_w, grad_wt, None, None
        quotient, safe_den, pos = ctx.saved_tensors[2:]
        # autograd's steps through the closed form: the held neurons' where, the clamp (which passes the
        # gradient at its edges), the division, the where of den
        g = torch.where(pos, grad, 0.0)
        g = torch.where((quotient >= t_start) & (quotient <= t_end), g, torch.zeros((), dtype=g.dtype, device=g.device))
        grad_num = g / safe_den
        grad_den = torch.where(pos, -g * (quotient / safe_den), 0.0)
        return grad_den, grad_num, None, None


def _closed_form(w_sum: Tensor, wt_sum: Tensor, t_start: float, t_end: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The closed form in torch operations: ``(times, num / safe_den, safe_den, den > 0)``, where ``safe_den``
    is ``den`` with 1 in place of ``den <= 0``. Differentiable by autograd. (Every ``where`` is kept even
    when no neuron is held: they set the memory layout of the results and so the order in which the
    gradient of a broadcast W_j is summed, e.g. for channels-last inputs.)"""
    den = 1.0 + w_sum
    num = t_end + wt_sum
    pos = den > 0
    safe_den = torch.where(pos, den, torch.ones_like(den))
    quotient = num / safe_den
    start, end = torch.full_like(den, t_start), torch.full_like(den, t_end)
    held = torch.where(den * t_start - num >= 0, start, end)
    return torch.where(pos, torch.clamp(quotient, t_start, t_end), held), quotient, safe_den, pos


def _window_times_by_autograd(w_sum: Tensor, wt_sum: Tensor, t_start: float, t_end: float) -> Tensor:
    """``window_times`` for autograd to differentiate (second derivatives)."""
    return _closed_form(w_sum, wt_sum, t_start, t_end)[0]


def _autograd_grads(fn: Any, a: Tensor, b: Tensor, grad: Tensor, *args: Any) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``fn(a, b, *args)`` by autograd with their own graph (a backward asked to
    ``create_graph``); None for an input that needs none."""
    wanted = [x for x in (a, b) if x.requires_grad]
    with torch.enable_grad():
        out = fn(a, b, *args)
    found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True))
    return (next(found) if a.requires_grad else None), (next(found) if b.requires_grad else None)


def _scalars(like: Tensor, window: tuple[float, float]) -> tuple[Any, Any, Any]:
    """``t_start``, ``t_end`` and 1 as NumPy scalars of ``like``'s dtype: the values torch's arithmetic
    rounds a Python float to before it meets a tensor of that dtype."""
    kind = np.float32 if like.dtype == torch.float32 else np.float64
    return kind(window[0]), kind(window[1]), kind(1.0)


def window_times(w_sum: Tensor, wt_sum: Tensor, t_start: float, t_end: float) -> Tensor:
    """Spike times from ``W_j = sum_i w_ji`` and ``sum_i w_ji t_i`` (over inputs that spiked): the closed
    form of the module docstring, with its gradient (none for a neuron held at an edge, the closed form's
    at exact equality)."""
    return _WindowTimes.apply(w_sum, wt_sum, t_start, t_end)


def standardized_weight(raw: Tensor, gain: Tensor, row_sum: float) -> Tensor:
    """Weight standardisation: each neuron's (row's) weights become ``row_sum / n + gain_j * v_j / |v_j|``,
    where ``v_j`` is the raw row minus its mean and ``n`` the fan-in.

    Every row then sums to exactly ``row_sum`` (the windowed neuron's W_j when all its inputs spike) and
    its zero-sum part has L2 norm ``|gain_j|``, whatever the raw weights: training moves the direction and
    the gain but not the operating point. ``raw`` is ``[N_out, ...]``, ``gain`` is ``[N_out]``; a raw row of
    equal weights has no direction and gets ``row_sum / n`` everywhere. Gradients as autograd's (written out
    in ``_Standardized``)."""
    if not isinstance(raw, Tensor) or not isinstance(gain, Tensor):
        raise ValueError("raw and gain must be torch.Tensors")
    if raw.ndim < 2 or gain.shape != raw.shape[:1]:
        raise ValueError(f"expected raw [N_out, ...] and gain [N_out], got {tuple(raw.shape)} and {tuple(gain.shape)}")
    check_finite("row_sum", row_sum)
    return _Standardized.apply(raw.reshape(raw.shape[0], -1), gain, row_sum).view_as(raw)


class _Standardized(torch.autograd.Function):
    """``standardized_weight`` on ``rows [N_out, n]`` with its gradient written out: the same arithmetic as
    autograd through ``centred / norm`` (the norm clamped to ``tiny ** 0.5``) and the mean, in fewer passes
    over the weights and fewer weight-sized temporaries (the direction computed once, one scratch matrix)."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, gain: Tensor, row_sum: float) -> Tensor:
        out, parts = _standardized_parts(rows, gain, row_sum)
        ctx.row_sum = row_sum
        ctx.save_for_backward(rows, gain, *parts)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        if torch.is_grad_enabled():  # create_graph: autograd's own gradient, itself differentiable
            return (*_autograd_grads(_standardized_rows, *ctx.saved_tensors[:2], grad, ctx.row_sum), None)
        gain, norm0, norm, unflat, direction, flat = ctx.saved_tensors[1:]
        # (one scratch matrix, reused, in place of a fresh weight-sized temporary for each step below)
        scratch = torch.mul(grad, direction)
        grad_gain = scratch.sum(1) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_gain, None
        grad_dir = grad * gain[:, None]
        if flat is not None:
            grad_dir = torch.where(flat, torch.zeros_like(grad_dir), grad_dir)
        # d(centred / norm): to centred grad / norm; to the norm -sum(grad * centred / norm / norm)
        grad_norm = torch.div(unflat, norm, out=scratch).mul_(grad_dir).neg_().sum(1, keepdim=True)
        grad_norm = torch.where(norm0 >= _norm_floor(norm0), grad_norm, torch.zeros_like(grad_norm))  # the clamp
        # d|centred| = centred / |centred|: ``unflat`` where the clamp did nothing; elsewhere grad_norm is +0,
        # and +0 times either (finite, of the same sign) is the same zero
        grad_centred = grad_dir.div_(norm).add_(torch.mul(unflat, grad_norm, out=scratch))
        # d(rows - mean): the row's own entry, and minus the row's sum spread evenly by the mean
        # (the negated terms summed, as autograd does: a sum of zeros is +0, its negation -0)
        spread = torch.neg(grad_centred, out=scratch).sum(1, keepdim=True) / grad_centred.shape[1]
        return grad_centred.add_(spread), grad_gain, None


def _norm_floor(like: Tensor) -> float:
    """The least norm a row is divided by: ``tiny ** 0.5`` of ``like``'s dtype."""
    return torch.finfo(like.dtype).tiny ** 0.5


def _standardized_parts(
    rows: Tensor, gain: Tensor, row_sum: float
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]]:
    """``standardized_weight`` of ``rows [N_out, n]`` in plain torch operations (differentiable by autograd),
    and the parts its written-out gradient reuses: ``(norm0, norm, unflat, direction, flat)``, the row
    norms before and after the floor, ``centred / norm``, the direction and the mask of exactly equal rows
    (None when there is none)."""
    centred = rows - rows.mean(1, keepdim=True)
    norm0 = centred.norm(dim=1, keepdim=True)
    norm = norm0.clamp_min(_norm_floor(rows))
    unflat = centred / norm
    # equal weights, told exactly: the rounded mean leaves noise in ``centred`` that would become a
    # direction (amax and amin: torch.aminmax by row is slower)
    equal = rows.amax(1, keepdim=True) == rows.amin(1, keepdim=True)
    flat = equal if bool(equal.any()) else None
    direction = unflat if flat is None else torch.where(flat, torch.zeros_like(unflat), unflat)
    return row_sum / rows.shape[1] + gain[:, None] * direction, (norm0, norm, unflat, direction, flat)


def _standardized_rows(rows: Tensor, gain: Tensor, row_sum: float) -> Tensor:
    """``standardized_weight`` of ``rows [N_out, n]``, for autograd to differentiate (second derivatives)."""
    return _standardized_parts(rows, gain, row_sum)[0]


def _split(t_in: Tensor, all_spiked: bool) -> tuple[Tensor | None, Tensor]:
    """``(mask, times)``: 1 where an input spiked (0 elsewhere; None when every input spiked) and the
    times with no-spike set to 0."""
    if all_spiked:
        return None, t_in
    spiked = t_in < math.inf  # checked: every time is >= 0 or +inf
    return spiked.to(t_in.dtype), torch.where(spiked, t_in, torch.zeros_like(t_in))


def _dense_sums(t_in: Tensor, weight: Tensor, t_start: float, t_end: float) -> tuple[Tensor, Tensor]:
    """A dense layer's checked inputs reduced to ``(W_j, sum_i w_ji t_i)`` per sample, over the inputs
    that spiked: ``[B, N_out]`` each."""
    all_spiked = _check_window(t_in, weight, t_start, t_end, 2)
    if t_in.shape[1] != weight.shape[1]:
        raise ValueError(f"t_in has {t_in.shape[1]} inputs, weight expects {weight.shape[1]}")
    mask, times = _split(t_in, all_spiked)
    # Hidden layers: every input spiked, and W_j is the row sum (half the work).
    w_sum = weight.sum(1).expand(t_in.shape[0], -1) if mask is None else mask @ weight.T
    return w_sum, times @ weight.T


def window_linear(t_in: Tensor, weight: Tensor, *, t_start: float, t_end: float) -> Tensor:
    """Dense layer of windowed neurons: ``t_in [B, N_in]`` (+inf = no spike, every spike <= t_start),
    ``weight [N_out, N_in]`` -> spike times ``[B, N_out]`` in ``[t_start, t_end]``."""
    w_sum, wt_sum = _dense_sums(t_in, weight, t_start, t_end)
    return window_times(w_sum, wt_sum, t_start, t_end)


def window_conv2d(
    t_in: Tensor, weight: Tensor, *, stride: int = 1, padding: int = 0, t_start: float, t_end: float
) -> Tensor:
    """Convolution of windowed neurons: ``t_in [B, C_in, H, W]``, ``weight [C_out, C_in, k, k]`` ->
    ``[B, C_out, H_out, W_out]``; padded positions never spike."""
    all_spiked = _check_window(t_in, weight, t_start, t_end, 4)
    if t_in.shape[1] != weight.shape[1]:
        raise ValueError(f"t_in has {t_in.shape[1]} channels, weight expects {weight.shape[1]}")
    (sh, sw), (ph, pw) = check_int_pair("stride", stride, 1), check_int_pair("padding", padding, 0)
    check_kernel_fits((weight.shape[2], weight.shape[3]), t_in.shape[2] + 2 * ph, t_in.shape[3] + 2 * pw)
    mask, times = _split(t_in, all_spiked)
    wt_sum = F.conv2d(times, weight, stride=(sh, sw), padding=(ph, pw))
    if mask is not None:
        w_sum = F.conv2d(mask, weight, stride=(sh, sw), padding=(ph, pw))
    elif (ph, pw) == (0, 0):  # every input spiked and no padding: W_j is the kernel's sum
        w_sum = weight.sum((1, 2, 3)).view(1, -1, 1, 1).expand_as(wt_sum)
    else:  # every input spiked: W_j depends only on which taps fall on the padding, the same for every image
        w_sum = F.conv2d(t_in.new_ones((1, *t_in.shape[1:])), weight, stride=(sh, sw), padding=(ph, pw))
        w_sum = w_sum.expand_as(wt_sum)
    return window_times(w_sum, wt_sum, t_start, t_end)


def window_held_penalty(t_in: Tensor, weight: Tensor, t_out: Tensor, *, t_start: float, t_end: float) -> Tensor:
    """Mean over samples of sum_j max(0, -V_j(e_l)) over the dense layer's neurons held at the window's end.

    A neuron whose g(t) = V_j(t) - (e_l - t) stays negative is forced to fire at e_l and passes no gradient,
    so a spike-time loss can never pull it back into its window (an output neuron in that state for every
    image is a class the network never decides). At the window's end the threshold is 0, so the neuron
    crossed by e_l exactly when V_j(e_l) = sum_i w_ji (e_l - t_i) >= 0 (over the inputs that spiked): this
    term raises V_j(e_l) of the held neurons until they fire inside the window. Neurons with
    ``t_out < t_end`` (inside the window or held at its start) contribute nothing. ``t_in [B, N_in]``,
    ``weight [N_out, N_in]``, ``t_start``, ``t_end`` as for ``window_linear``; ``t_out [B, N_out]`` its output."""
    w_sum, wt_sum = _dense_sums(t_in, weight, t_start, t_end)
    if not isinstance(t_out, Tensor) or tuple(t_out.shape) != tuple(w_sum.shape):
        got = tuple(t_out.shape) if isinstance(t_out, Tensor) else type(t_out).__name__
        raise ValueError(f"t_out must be a [B, N_out] = {tuple(w_sum.shape)} tensor, got {got}")
    held = t_out.detach() >= t_end
    if not bool(held.any()):
        return t_out.new_zeros(())
    v_end = t_end * w_sum - wt_sum
    return torch.where(held, (-v_end).clamp_min(0), torch.zeros_like(v_end)).sum(1).mean()
