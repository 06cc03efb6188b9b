"""Float64 NumPy oracle for the ReL-PSP model, written from the model definition (docs/model.md).

This module is deliberately independent of ``relpsp``: it never imports it, and it does not use the
library's algorithm (sorted prefixes and the closed form). It simulates one neuron event by event:

    V(t) = sum_i w_i * max(0, t - t_i)

is linear between input events. Walking the distinct input times in order, we keep V and its slope
(the summed weight of the inputs that have arrived); inputs with equal times enter together. Within
each segment [e_k, e_{k+1}] the neuron fires at the first t with V(t) = theta, if any. The first
crossing wins, so a potential that dips and crosses again later is never reported late. A spike later
than ``t_max`` is dropped (+inf).

STDBP gradients come straight from the implicit function theorem on V_j(t_j) = theta with the causal
set C_j = {i : t_i < t_j} and W_j = sum_{i in C_j} w_ji:

    dt_j/dt_i = w_ji / W_j,   dt_j/dw_ji = (t_i - t_j) / W_j   on C_j, else 0.

``w_sum_min`` optionally applies the library's documented guard (divide by max(W_j, w_sum_min)); it
defaults to 0, the exact derivative.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "conv2d",
    "conv2d_grads",
    "conv2d_patches",
    "dense",
    "dense_grads",
    "kink_report",
    "min_pool2d",
    "min_pool2d_grad",
    "neuron",
    "neuron_grads",
]

INF = math.inf


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def neuron(t_in, w, theta: float = 1.0, t_max: float = INF) -> float:
    """Spike time of one neuron: ``t_in [N]`` (+inf = no spike), ``w [N]`` -> float (+inf = silent)."""
    t_in, w = _f64(t_in), _f64(w)
    finite = np.isfinite(t_in)
    events = sorted(set(t_in[finite].tolist()))
    v = 0.0
    slope = 0.0
    t_prev = None
    for k, e in enumerate(events):
        if t_prev is not None:
            v += slope * (e - t_prev)
            if v >= theta:  # reached exactly at the end of the previous segment (rounding)
                return e if e <= t_max else INF
        slope += float(w[finite & (t_in == e)].sum())  # all inputs at time e enter together
        t_prev = e
        t_end = events[k + 1] if k + 1 < len(events) else INF
        if slope > 0.0:
            t_cross = e + (theta - v) / slope
            if t_cross <= t_end:
                return t_cross if t_cross <= t_max else INF
    return INF


def neuron_grads(t_in, w, t_out: float, w_sum_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(dt_j/dt_i [N], dt_j/dw_ji [N])`` of one neuron at its spike time ``t_out`` (zeros if silent)."""
    t_in, w = _f64(t_in), _f64(w)
    d_t = np.zeros_like(t_in)
    d_w = np.zeros_like(t_in)
    if not math.isfinite(t_out):
        return d_t, d_w
    causal = t_in < t_out  # +inf inputs are never causal
    w_sum = float(w[causal].sum())
    denom = max(w_sum, w_sum_min)
    d_t[causal] = w[causal] / denom
    d_w[causal] = (t_in[causal] - t_out) / denom
    return d_t, d_w


def dense(t_in, weight, theta: float = 1.0, t_max: float = INF) -> np.ndarray:
    """``t_in [B, N_in]``, ``weight [N_out, N_in]`` -> ``[B, N_out]``, one neuron at a time."""
    t_in, weight = _f64(t_in), _f64(weight)
    out = np.full((t_in.shape[0], weight.shape[0]), INF)
    for b in range(t_in.shape[0]):
        for j in range(weight.shape[0]):
            out[b, j] = neuron(t_in[b], weight[j], theta, t_max)
    return out


def dense_grads(
    t_in, weight, grad_out, theta: float = 1.0, t_max: float = INF, w_sum_min: float = 0.0, absolute: bool = False
):
    """Vector-Jacobian products: ``(dL/dt_in [B, N_in], dL/dweight [N_out, N_in])`` for ``grad_out``.

    With ``absolute=True``, the sums of the absolute values of the terms instead: the scale against
    which rounding in a sum of terms that cancel has to be judged.
    """
    t_in, weight, grad_out = _f64(t_in), _f64(weight), _f64(grad_out)
    t_out = dense(t_in, weight, theta, t_max)
    g_in = np.zeros_like(t_in)
    g_w = np.zeros_like(weight)
    for b in range(t_in.shape[0]):
        for j in range(weight.shape[0]):
            d_t, d_w = neuron_grads(t_in[b], weight[j], t_out[b, j], w_sum_min)
            if absolute:
                g_in[b] += abs(grad_out[b, j] * d_t)
                g_w[j] += abs(grad_out[b, j] * d_w)
            else:
                g_in[b] += grad_out[b, j] * d_t
                g_w[j] += grad_out[b, j] * d_w
    return g_in, g_w


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _patch(t_b, c_in, kh, kw, y0, x0):
    """Receptive field ``[C_in * kh * kw]`` at top-left (y0, x0) in unpadded coordinates; outside is +inf."""
    h, w = t_b.shape[1], t_b.shape[2]
    patch = np.full(c_in * kh * kw, INF)
    src = [None] * (c_in * kh * kw)
    n = 0
    for c in range(c_in):
        for ky in range(kh):
            for kx in range(kw):
                y, x = y0 + ky, x0 + kx
                if 0 <= y < h and 0 <= x < w:
                    patch[n] = t_b[c, y, x]
                    src[n] = (c, y, x)
                n += 1
    return patch, src


def conv2d(t_in, weight, stride: int = 1, padding: int = 0, theta: float = 1.0, t_max: float = INF) -> np.ndarray:
    """``t_in [B, C_in, H, W]``, ``weight [C_out, C_in, kh, kw]`` -> ``[B, C_out, H_out, W_out]``.

    Explicit loops over output positions; padded positions never spike.
    """
    t_in, weight = _f64(t_in), _f64(weight)
    b_n, c_in, h, w = t_in.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    out = np.full((b_n, c_out, h_out, w_out), INF)
    for b in range(b_n):
        for oy in range(h_out):
            for ox in range(w_out):
                patch, _ = _patch(t_in[b], c_in, kh, kw, oy * stride - padding, ox * stride - padding)
                for co in range(c_out):
                    out[b, co, oy, ox] = neuron(patch, weight[co].ravel(), theta, t_max)
    return out


def conv2d_patches(t_in, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Receptive fields as rows ``[B * H_out * W_out, C_in * kh * kw]`` (for ``kink_report``)."""
    t_in = _f64(t_in)
    b_n, c_in, h, w = t_in.shape
    h_out, w_out = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    rows = []
    for b in range(b_n):
        for oy in range(h_out):
            for ox in range(w_out):
                rows.append(_patch(t_in[b], c_in, kh, kw, oy * stride - padding, ox * stride - padding)[0])
    return np.array(rows).reshape(b_n * h_out * w_out, c_in * kh * kw)


def conv2d_grads(t_in, weight, grad_out, stride: int = 1, padding: int = 0, theta: float = 1.0, t_max: float = INF):
    """``(dL/dt_in [B, C_in, H, W], dL/dweight [C_out, C_in, kh, kw])`` for ``grad_out``."""
    t_in, weight, grad_out = _f64(t_in), _f64(weight), _f64(grad_out)
    b_n, c_in, _, _ = t_in.shape
    c_out, _, kh, kw = weight.shape
    t_out = conv2d(t_in, weight, stride, padding, theta, t_max)
    g_in = np.zeros_like(t_in)
    g_w = np.zeros_like(weight)
    for b in range(b_n):
        for oy in range(t_out.shape[2]):
            for ox in range(t_out.shape[3]):
                patch, src = _patch(t_in[b], c_in, kh, kw, oy * stride - padding, ox * stride - padding)
                for co in range(c_out):
                    d_t, d_w = neuron_grads(patch, weight[co].ravel(), t_out[b, co, oy, ox])
                    g = grad_out[b, co, oy, ox]
                    g_w[co] += g * d_w.reshape(c_in, kh, kw)
                    for n, where in enumerate(src):
                        if where is not None:
                            g_in[(b, *where)] += g * d_t[n]
    return g_in, g_w


def _windows(h: int, w: int, k: tuple[int, int], s: tuple[int, int]):
    for oy in range((h - k[0]) // s[0] + 1):
        for ox in range((w - k[1]) // s[1] + 1):
            yield oy, ox, [(oy * s[0] + dy, ox * s[1] + dx) for dy in range(k[0]) for dx in range(k[1])]


def min_pool2d(t, k: tuple[int, int], s: tuple[int, int]) -> np.ndarray:
    """Earliest spike of each window: ``[B, C, H, W]`` -> ``[B, C, H_out, W_out]`` (+inf if none)."""
    t = _f64(t)
    b_n, c_n, h, w = t.shape
    out = np.full((b_n, c_n, (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1), INF)
    for b in range(b_n):
        for c in range(c_n):
            for oy, ox, cells in _windows(h, w, k, s):
                out[b, c, oy, ox] = min(t[b, c, y, x] for y, x in cells)
    return out


def min_pool2d_grad(t, grad_out, k: tuple[int, int], s: tuple[int, int]) -> np.ndarray:
    """Gradient to the first (row-major) earliest spike of each window; a window with no spike passes none."""
    t, grad_out = _f64(t), _f64(grad_out)
    b_n, c_n, h, w = t.shape
    g = np.zeros_like(t)
    for b in range(b_n):
        for c in range(c_n):
            for oy, ox, cells in _windows(h, w, k, s):
                best = None
                for y, x in cells:
                    if math.isfinite(t[b, c, y, x]) and (best is None or t[b, c, y, x] < t[(b, c, *best)]):
                        best = (y, x)
                if best is not None:
                    g[(b, c, *best)] += grad_out[b, c, oy, ox]
    return g


def kink_report(t_in, weight, theta: float = 1.0, t_max: float = INF) -> dict[str, float]:
    """How far a dense layer is from the places where its output is not differentiable.

    Returns the smallest |t_i - t_j| over finite inputs and firing outputs (a causal set about to change),
    the smallest W_j of firing outputs, the largest V(t) / theta reached by silent outputs before t_max
    (close to 1: a spike about to appear), the largest V / theta at input events before t_j for firing
    outputs (an earlier crossing about to appear) and the smallest |t_j - t_max| (a cut-off about to act).
    """
    t_in, weight = _f64(t_in), _f64(weight)
    t_out = dense(t_in, weight, theta, t_max)
    gap, w_min, v_silent, v_before, cut = INF, INF, -INF, -INF, INF
    for b in range(t_in.shape[0]):
        finite = np.isfinite(t_in[b])
        for j in range(weight.shape[0]):
            tj = t_out[b, j]

            def v_at(t, b=b, j=j, finite=finite):
                return float((weight[j][finite] * np.maximum(0.0, t - t_in[b][finite])).sum())

            if math.isfinite(tj):
                if finite.any():
                    gap = min(gap, float(np.abs(t_in[b][finite] - tj).min()))
                w_min = min(w_min, float(weight[j][t_in[b] < tj].sum()))
                for e in t_in[b][finite & (t_in[b] < tj)]:
                    v_before = max(v_before, v_at(e) / theta)
                if math.isfinite(t_max):
                    cut = min(cut, abs(tj - t_max))
            else:
                probes = list(t_in[b][finite & (t_in[b] <= t_max)])
                if math.isfinite(t_max):
                    probes.append(t_max)
                    # a neuron cut by t_max may cross just after it
                    cut = min(cut, abs(neuron(t_in[b], weight[j], theta) - t_max))
                for e in probes:
                    v_silent = max(v_silent, v_at(e) / theta)
    return {"gap": gap, "w_min": w_min, "v_silent": v_silent, "v_before": v_before, "cut": cut}
