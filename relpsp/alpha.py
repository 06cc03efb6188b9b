"""Baseline: a single-spike neuron with a decaying alpha-shaped PSP, for comparisons with ReL-PSP.

Not the paper's neuron. It is here so that the paper's argument can be measured (``scripts/depth_study.py``):
with a decaying kernel, a neuron that only just reaches threshold crosses near the PSP peak where the
slope ``dV/dt`` -> 0 (large gradients), and one whose peak stays below threshold never fires (no gradient).

    K(s) = (s / tau) * exp(1 - s / tau)  for s > 0   (peak 1 at s = tau; the kernel of Comsa et al. 2020,
                                                      scaled so that a weight is the PSP's peak height)
    V_j(t) = sum_i w_ji K(t - t_i),     t_j = first t with V_j(t) = theta   (+inf if none before t_max)

The forward is exact: an event walk per neuron and, inside the interval where the crossing happens, the
closed form through the Lambert W function (``relpsp.kernels.alpha_numba``), in float64. Gradients follow
from the implicit function theorem at the crossing, ``dt_j = -(dV_j / dp) / V_j'(t_j)``, with the slope
clamped below at ``slope_min`` (the guard ReL-PSP applies to W_j, same default). Dense layers only, CPU
only, needs numba.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from relpsp._validate import check_finite_positive
from relpsp.core.dense import W_SUM_MIN
from relpsp.functional import _check_linear
from relpsp.kernels import load_alpha_kernels

__all__ = ["AlphaLinearFn", "alpha_linear", "alpha_potential"]


def _f64(x: Tensor) -> Any:
    return x.detach().to(torch.float64).contiguous().numpy()


class AlphaLinearFn(torch.autograd.Function):
    """``(t_in [R, N], weight [M, N], theta, tau, t_max, slope_min) -> (t_out [R, M], slope, t_exact)``;
    unvalidated. ``t_exact`` is the float64 spike time, which the backward uses: cast to float32, a spike
    less than half a float32 step after its last causal input rounds onto that input's time, and the
    backward's test ``t_out - t_i > 0`` would then drop the input that triggered it."""

    @staticmethod
    def forward(  # type: ignore[override]
        t_in: Tensor, weight: Tensor, theta: float, tau: float, t_max: float, slope_min: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        t_out, slope = load_alpha_kernels().alpha_linear_fwd(_f64(t_in), _f64(weight), theta, tau, t_max)
        t_exact = torch.from_numpy(t_out)
        return t_exact.to(t_in.dtype, copy=True), torch.from_numpy(slope), t_exact  # copy: never the same tensor

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        t_in, weight, _theta, tau, _t_max, slope_min = inputs
        _t_out, slope, t_exact = output
        ctx.save_for_backward(t_in, weight, t_exact, slope)
        ctx.mark_non_differentiable(slope, t_exact)
        ctx.tau = tau
        ctx.slope_min = slope_min

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_out: Tensor, _grad_slope: Tensor | None, _grad_exact: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        t_in, weight, t_out, slope = ctx.saved_tensors
        need_in, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_in, g_w = load_alpha_kernels().alpha_linear_bwd(
            _f64(grad_out),
            _f64(t_in),
            _f64(weight),
            _f64(t_out),
            slope.numpy(),
            ctx.tau,
            ctx.slope_min,
            need_in,
            need_w,
        )
        gi = torch.from_numpy(g_in).to(t_in.dtype) if need_in else None
        gw = torch.from_numpy(g_w).to(weight.dtype) if need_w else None
        return gi, gw, None, None, None, None


def alpha_linear(
    t_in: Tensor,
    weight: Tensor,
    *,
    theta: float = 1.0,
    tau: float = 1.0,
    t_max: float = math.inf,
    slope_min: float = W_SUM_MIN,
    return_slope: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact alpha-kernel dense layer: ``t_in [B, N_in]``, ``weight [N_out, N_in]`` -> ``t_out [B, N_out]``.

    ``tau``: the kernel's time to peak. ``slope_min``: lower clamp of ``V'(t_out)`` in the backward only.
    With ``return_slope``, also the (non-differentiable) slope at each crossing (0 where silent).
    CPU tensors only; computed in float64 and returned in the input dtype.
    """
    _check_linear(t_in, weight, theta, t_max)
    check_finite_positive("tau", tau)
    check_finite_positive("slope_min", slope_min)
    if t_in.device.type != "cpu":
        raise ValueError(f"alpha_linear runs on the CPU only, got tensors on {t_in.device}")
    t_out, slope, _ = AlphaLinearFn.apply(t_in, weight, float(theta), float(tau), float(t_max), float(slope_min))
    return (t_out, slope) if return_slope else t_out


def alpha_potential(t: Tensor, t_in: Tensor, weight: Tensor, *, tau: float = 1.0) -> Tensor:
    """``V_j(t)`` for times ``t [B, N_out]``: the plain sum over inputs, for checks and plots (``[B, N_out]``)."""
    s = t.unsqueeze(-1) - t_in.unsqueeze(1)  # [B, M, N]
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.zeros_like(s))
    k = (s / tau) * torch.exp(1.0 - s / tau)
    return (k * weight.unsqueeze(0)).sum(-1)
