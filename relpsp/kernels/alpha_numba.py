"""Compiled float64 kernels of the alpha-kernel baseline neuron (``relpsp.alpha``); imported lazily.

Kernel ``K(s) = (s / tau) * exp(1 - s / tau)`` for ``s > 0`` (peak 1 at ``s = tau``), potential
``V(t) = sum_i w_i K(t - t_i)``, output: the first ``t`` with ``V(t) = theta`` (``+inf`` if none before
``t_max``). Between two input events, with ``u = t - r`` measured from the last event ``r``,

    V = (e / tau) * exp(-u / tau) * (u * A - B),   A = sum w_i exp((t_i - r) / tau),
                                                   B = sum w_i (t_i - r) exp((t_i - r) / tau),

which rises until its peak at ``u_p = B / A + tau`` (only when ``A > 0``; for ``A <= 0`` it cannot rise
to a positive threshold). A crossing on the rising side solves ``(v / tau) exp(-v / tau) = c`` with
``v = u - B / A`` and ``c = theta * exp(B / (A tau)) / (e A)``, i.e. ``u = B / A - tau * W0(-c)`` with
``W0`` the principal branch of the Lambert W function. Moving ``r`` to the next event multiplies A by
``exp(-d / tau)`` and maps ``B -> exp(-d / tau) * (B - d * A)``.

A crossing that rounds onto the last input's time ``ts[k]`` (it lies less than half a rounding step
after it) is returned as the next float above ``ts[k]``, and one that rounds past the next boundary
``ts[k + 1]`` as that boundary, as in ReL-PSP (``relpsp.core.dense``), so that the backward's causal set
``t_i < t*`` is the forward's.

Gradients use the implicit function theorem at the crossing: with the slope ``V' = dV/dt (t*)``,
``dt*/dw_i = -K(t* - t_i) / V'`` and ``dt*/dt_i = w_i K'(t* - t_i) / V'`` over the causal inputs
``t_i < t*``; ``V'`` is clamped below at ``slope_min`` (the same guard as ReL-PSP's ``W_j``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["alpha_linear_bwd", "alpha_linear_fwd", "lambertw0"]

_E = math.e
_INV_E = 1.0 / math.e


@njit(cache=True, fastmath=False)
def lambertw0(x: float) -> float:
    """Principal branch W0 on ``[-1/e, 0]`` (Halley's iteration, to float64 rounding)."""
    if x <= -_INV_E:
        return -1.0
    if x >= 0.0:
        return 0.0
    if x < -0.3:
        p = math.sqrt(2.0 * (_E * x + 1.0))
        w = -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p * p * p
    else:
        w = x * (1.0 - x + 1.5 * x * x)
    for _ in range(20):
        ew = math.exp(w)
        f = w * ew - x
        wp1 = w + 1.0
        if wp1 <= 1e-300:
            break
        den = ew * wp1 - (w + 2.0) * f / (2.0 * wp1)
        if den == 0.0:
            break
        step = f / den
        w -= step
        if abs(step) <= 1e-16 * (1.0 + abs(w)):
            break
    return w


@njit(parallel=True, cache=True)
def alpha_linear_fwd(t_in, weight, theta, tau, t_max):  # pragma: no cover - compiled
    """``t_in [R, N]``, ``weight [M, N]`` (float64) -> ``t_out [R, M]``, slope ``V'(t_out)`` (0 if silent)."""
    n_rows, n_in = t_in.shape
    n_out = weight.shape[0]
    t_out = np.full((n_rows, n_out), np.inf)
    slope = np.zeros((n_rows, n_out))
    log_theta = math.log(theta)
    for r in prange(n_rows):
        order = np.argsort(t_in[r])
        n = 0
        while n < n_in and t_in[r, order[n]] < t_max:
            n += 1
        ts = np.empty(n + 1)
        for k in range(n):
            ts[k] = t_in[r, order[k]]
        ts[n] = t_max
        decay = np.empty(n + 1)  # decay[k] = exp(-(ts[k] - ts[k-1]) / tau): from event k-1 to the next boundary
        decay[0] = 1.0
        for k in range(1, n + 1):
            decay[k] = math.exp(-(ts[k] - ts[k - 1]) / tau)
        for j in range(n_out):
            a = 0.0
            b = 0.0
            for k in range(n):
                if k > 0:
                    d = ts[k] - ts[k - 1]
                    b = decay[k] * (b - d * a)
                    a = decay[k] * a
                a += weight[j, order[k]]
                span = ts[k + 1] - ts[k]  # may be inf (last event, no cut-off)
                if span <= 0.0 or a <= 0.0:
                    continue
                u_peak = b / a + tau
                if u_peak <= 0.0:
                    continue
                if u_peak < span:
                    v_top = (_E / tau) * math.exp(-u_peak / tau) * (u_peak * a - b)
                else:
                    v_top = (_E / tau) * decay[k + 1] * (span * a - b)
                if not v_top >= theta:
                    continue
                log_c = log_theta + b / (a * tau) - 1.0 - math.log(a)
                x = -math.exp(log_c) if log_c < 0.0 else -_INV_E
                u = b / a - tau * lambertw0(max(x, -_INV_E))
                u = min(max(u, 0.0), min(u_peak, span))
                t_out[r, j] = min(ts[k] + u, ts[k + 1])  # inside (ts[k], ts[k + 1]] despite rounding
                if t_out[r, j] <= ts[k]:  # V(ts[k]) < theta, so the crossing lies after ts[k]; keep it causal
                    t_out[r, j] = np.nextafter(ts[k], np.inf)
                slope[r, j] = (_E / tau) * math.exp(-u / tau) * (a - (u * a - b) / tau)
                break
    return t_out, slope


@njit(parallel=True, cache=True)
def _grad_in(grad_out, t_in, weight, t_out, slope, tau, slope_min):  # pragma: no cover - compiled
    n_rows, n_in = t_in.shape
    n_out = weight.shape[0]
    g_in = np.zeros((n_rows, n_in))
    for r in prange(n_rows):
        for j in range(n_out):
            g = grad_out[r, j]
            to = t_out[r, j]
            if g == 0.0 or not math.isfinite(to):
                continue
            scale = g / max(slope[r, j], slope_min) * (_E / tau)
            for i in range(n_in):
                s = to - t_in[r, i]
                if s > 0.0:
                    g_in[r, i] += scale * weight[j, i] * math.exp(-s / tau) * (1.0 - s / tau)
    return g_in


@njit(parallel=True, cache=True)
def _grad_w(grad_out, t_in, t_out, slope, tau, slope_min):  # pragma: no cover - compiled
    n_rows, n_in = t_in.shape
    n_out = t_out.shape[1]
    g_w = np.zeros((n_out, n_in))
    for j in prange(n_out):
        for r in range(n_rows):
            g = grad_out[r, j]
            to = t_out[r, j]
            if g == 0.0 or not math.isfinite(to):
                continue
            scale = -g / max(slope[r, j], slope_min) * (_E / tau)
            for i in range(n_in):
                s = to - t_in[r, i]
                if s > 0.0:
                    g_w[j, i] += scale * s * math.exp(-s / tau)  # scale * tau * K(s) / e
    return g_w


def alpha_linear_bwd(grad_out, t_in, weight, t_out, slope, tau, slope_min, need_in=True, need_w=True):
    """Gradients ``(dL/dt_in [R, N] or None, dL/dweight [M, N] or None)`` in float64."""
    g_in = _grad_in(grad_out, t_in, weight, t_out, slope, tau, slope_min) if need_in else None
    g_w = _grad_w(grad_out, t_in, t_out, slope, tau, slope_min) if need_w else None
    return g_in, g_w
