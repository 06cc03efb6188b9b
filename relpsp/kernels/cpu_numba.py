"""Compiled exact ReL-PSP kernels for the CPU (numba), same contract as ``relpsp.core.dense``.

Forward, per row: sort the finite inputs, then walk the time-ordered groups of equal input times,
adding each group's weight rows to the running sums A_j, B_j (float64) of every neuron at once; after
each group, every neuron that has not fired and has A_j > 0 fires at t* = (theta + B_j)/A_j if t* is no
later than the next input time. The walk stops when every neuron has fired or the next input is later
than ``t_max``. Work per row is O(n_active * N_out) with no intermediate larger than N_out.

Backward, per row: u_j = dL/dt_j / max(W_j, w_sum_min) for firing j; then for each finite input i,
dL/dt_i = sum_{j: t_i < t_j} u_j w_ji and dL/dw_ji += u_j (t_i - t_j). Rows are split over threads,
each with its own float64 weight-gradient buffer, summed at the end (deterministic for a fixed thread
count).

Import this module only through ``relpsp.kernels.load_cpu_kernels`` (numba is an optional extra).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

__all__ = ["linear_bwd", "linear_fwd"]


@njit(cache=True, nogil=True)
def _fwd_rows(t_in, weight_t, theta, t_max, t_out, w_sum, r0, r1, a, b, key, idx):  # pragma: no cover
    n_in = t_in.shape[1]
    n_out = weight_t.shape[1]
    for r in range(r0, r1):
        n = 0
        for i in range(n_in):
            ti = t_in[r, i]
            if ti < math.inf:
                key[n] = ti
                idx[n] = i
                n += 1
        order = np.argsort(key[:n], kind="mergesort")
        for j in range(n_out):
            a[j] = 0.0
            b[j] = 0.0
            t_out[r, j] = math.inf
            w_sum[r, j] = 0.0
        remaining = n_out
        k = 0
        while k < n and remaining > 0:
            tk = key[order[k]]
            if tk > t_max:
                break
            while k < n and key[order[k]] == tk:
                i = idx[order[k]]
                for j in range(n_out):
                    w = weight_t[i, j]
                    a[j] += w
                    b[j] += w * tk
                k += 1
            t_next = key[order[k]] if k < n else math.inf
            fired_now = 0
            for j in range(n_out):
                if t_out[r, j] == math.inf and a[j] > 0.0:
                    cand = (theta + b[j]) / a[j]
                    if cand <= t_next:
                        t_out[r, j] = cand
                        w_sum[r, j] = a[j]
                        fired_now += 1
            remaining -= fired_now
        for j in range(n_out):
            if t_out[r, j] > t_max:
                t_out[r, j] = math.inf
                w_sum[r, j] = 0.0


@njit(parallel=True, cache=True)
def _fwd(t_in, weight_t, theta, t_max, t_out, w_sum, n_chunks):  # pragma: no cover
    rows, n_in = t_in.shape
    n_out = weight_t.shape[1]
    step = (rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        a = np.empty(n_out, np.float64)
        b = np.empty(n_out, np.float64)
        key = np.empty(n_in, np.float64)
        idx = np.empty(n_in, np.int64)
        _fwd_rows(t_in, weight_t, theta, t_max, t_out, w_sum, c * step, min(rows, (c + 1) * step), a, b, key, idx)


@njit(parallel=True, cache=True)
def _bwd(grad_out, t_in, weight_t, t_out, w_sum, w_sum_min, g_in, g_wt, n_chunks):  # pragma: no cover
    rows, n_in = t_in.shape
    n_out = weight_t.shape[1]
    step = (rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        u = np.empty(n_out, np.float64)
        tj = np.empty(n_out, np.float64)
        acc = g_wt[c]
        for r in range(c * step, min(rows, (c + 1) * step)):
            any_u = False
            for j in range(n_out):
                if t_out[r, j] < math.inf:
                    u[j] = grad_out[r, j] / max(w_sum[r, j], w_sum_min)
                    tj[j] = t_out[r, j]
                    if u[j] != 0.0:
                        any_u = True
                else:
                    u[j] = 0.0
                    tj[j] = -math.inf  # never later than an input: not causal
            if not any_u:
                for i in range(n_in):
                    g_in[r, i] = 0.0
                continue
            for i in range(n_in):
                ti = t_in[r, i]
                s = 0.0
                if ti < math.inf:
                    for j in range(n_out):
                        if ti < tj[j]:
                            s += u[j] * weight_t[i, j]
                            acc[i, j] += u[j] * (ti - tj[j])
                g_in[r, i] = s


def _chunks(rows: int) -> int:
    threads = numba.get_num_threads()
    # A few chunks per thread balance rows of uneven cost; never more chunks than rows.
    return max(1, min(rows, 4 * threads))


def linear_fwd(t_in: np.ndarray, weight: np.ndarray, theta: float, t_max: float) -> tuple[np.ndarray, np.ndarray]:
    """``t_in [R, N_in]``, ``weight [N_out, N_in]`` (same float dtype) -> ``(t_out, w_sum)`` ``[R, N_out]``."""
    rows = t_in.shape[0]
    n_out = weight.shape[0]
    t_out = np.empty((rows, n_out), t_in.dtype)
    w_sum = np.empty((rows, n_out), t_in.dtype)
    if rows:
        weight_t = np.ascontiguousarray(weight.T)
        _fwd(np.ascontiguousarray(t_in), weight_t, float(theta), float(t_max), t_out, w_sum, _chunks(rows))
    return t_out, w_sum


def linear_bwd(
    grad_out: np.ndarray,
    t_in: np.ndarray,
    weight: np.ndarray,
    t_out: np.ndarray,
    w_sum: np.ndarray,
    w_sum_min: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(grad_t_in [R, N_in], grad_weight [N_out, N_in])`` in the input dtype."""
    rows, n_in = t_in.shape
    n_out = weight.shape[0]
    g_in = np.empty((rows, n_in), t_in.dtype)
    # One weight-gradient buffer per thread: more chunks would cost more zeroing and summing than they save.
    n_chunks = max(1, min(rows, numba.get_num_threads()))
    g_wt = np.zeros((n_chunks, n_in, n_out), np.float64)
    if rows:
        _bwd(
            np.ascontiguousarray(grad_out),
            np.ascontiguousarray(t_in),
            np.ascontiguousarray(weight.T),
            np.ascontiguousarray(t_out),
            np.ascontiguousarray(w_sum),
            float(w_sum_min),
            g_in,
            g_wt,
            n_chunks,
        )
    return g_in, np.ascontiguousarray(g_wt.sum(0).T).astype(t_in.dtype)
