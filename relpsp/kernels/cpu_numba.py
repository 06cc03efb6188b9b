"""Compiled exact ReL-PSP kernels for the CPU (numba), same contract as ``relpsp.core.dense``.

Forward, per row: sort the finite inputs, then walk the time-ordered groups of equal input times,
adding each group's weight rows to the running sums A_j, B_j (float64) of every neuron at once; after
each group, every neuron that has not fired and has A_j > 0 fires at t* = (theta + B_j)/A_j if t* is no
later than the next input time. The walk stops when every neuron has fired or the next input is later
than ``t_max``. Work per row is O(n_active * N_out) with no intermediate larger than N_out.

Backward, per row: u_j = dL/dt_j / max(W_j, w_sum_min) for firing j; then for each finite input i,
dL/dt_i = sum_{j: t_i < t_j} u_j w_ji and dL/dw_ji += u_j (t_i - t_j). Rows are split over threads,
each with its own weight-gradient buffer (in the input dtype), summed in float64 at the end
(deterministic for a fixed thread count). The input-gradient sums are skipped when the input needs none.

Convolutions (``conv_fwd``, ``conv_bwd``) read every window from the padded image instead of im2col
rows: the forward sorts each image's spikes once, the backward adds each window's input gradient onto
the image (in float64) and splits images over threads.

Calls with less work than ``SERIAL_WORK`` (rows x inputs x neurons) run on the calling thread alone
(``numba.set_num_threads(1)`` for the call), so a small network's weight-gradient sums keep one order and
its runs do not depend on the thread count. Its speed does not change measurably (docs/PERFORMANCE.md).

Sorting uses an LSD radix sort on the IEEE bit patterns of the (non-negative) times; weights are read in
their own dtype and every sum runs in float64.

Import this module only through ``relpsp.kernels.load_cpu_kernels`` (numba is an optional extra).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import numba
import numpy as np
from numba import njit, prange
from numpy.typing import DTypeLike

__all__ = ["conv_bwd", "conv_fwd", "linear_bwd", "linear_fwd"]


# Reassociation lets LLVM vectorise the reductions; no nnan/ninf: +inf is data here.
_FLAGS = {"reassoc", "contract", "nsz"}
# The forward's sums A += w, B += w t: no "contract", which would fuse w t + B into one rounding where
# the torch path rounds twice, so that near a borderline crossing the backends still decide alike.
_FWD_FLAGS = {"reassoc", "nsz"}


@njit(cache=True, nogil=True, fastmath=_FWD_FLAGS)
def _add_input(a, b, w, tk):  # pragma: no cover
    """A_j += w_j, B_j += w_j t_k for every neuron (a separate function so that LLVM vectorises it)."""
    for j in range(a.shape[0]):
        a[j] += w[j]
        b[j] += w[j] * tk


@njit(cache=True, nogil=True, fastmath=_FWD_FLAGS)
def _count_crossings(a, b, theta, t_next):  # pragma: no cover
    """How many live neurons cross theta before ``t_next``: A > 0 and theta + B <= A t_next.
    Fired neurons carry A = -inf, so they never count (branch-free so that it vectorises)."""
    c = 0.0
    for j in range(a.shape[0]):
        aj = a[j]
        c += 1.0 if (aj > 0.0 and theta + b[j] <= aj * t_next) else 0.0
    return c


@njit(cache=True, nogil=True, fastmath=_FWD_FLAGS)
def _add_input_count(a, b, w, tk, theta, t_next):  # pragma: no cover
    """``_add_input`` then ``_count_crossings`` in one pass over the neurons (the last input of a group)."""
    c = 0.0
    for j in range(a.shape[0]):
        aj = a[j] + w[j]
        bj = b[j] + w[j] * tk
        a[j] = aj
        b[j] = bj
        c += 1.0 if (aj > 0.0 and theta + bj <= aj * t_next) else 0.0
    return c


@njit(cache=True, nogil=True)
def _next_above(x, nmant, minexp):  # pragma: no cover
    """The next number above ``x >= 0`` in the binary float format with ``nmant`` stored mantissa bits and
    smallest normal exponent ``minexp`` (``x`` must be a number of that format). The sum is exact in float64."""
    e = minexp if x == 0.0 else max(math.frexp(x)[1] - 1, minexp)
    return x + math.ldexp(1.0, e - nmant)


@njit(cache=True, nogil=True, fastmath=_FWD_FLAGS)
def _any_on_or_before(out, last):  # pragma: no cover
    """Whether some spike lies on or before its last causal input's time (silent neurons: +inf <= a
    finite time or -inf is false)."""
    c = 0.0
    for j in range(out.shape[0]):
        c += 1.0 if out[j] <= last[j] else 0.0
    return c > 0.0


@njit(cache=True, nogil=True)
def _fire(a, b, last, out, ws, theta, t_last, t_next):  # pragma: no cover
    """Record the spike t = (theta + B)/A of every neuron that crosses before ``t_next``, and ``t_last``
    (the time of the inputs just added) in ``last``; mark it fired. (No other work here: a branch inside
    the condition keeps LLVM from vectorising the loop; see docs/PERFORMANCE.md.)"""
    fired = 0
    for j in range(a.shape[0]):
        aj = a[j]
        if aj > 0.0 and theta + b[j] <= aj * t_next:
            out[j] = min((theta + b[j]) / aj, t_next)  # no later than the next input (relpsp.core.dense)
            last[j] = t_last
            ws[j] = aj
            a[j] = -math.inf
            fired += 1
    return fired


# Rows with at most this many input spikes are sorted by insertion: the radix sort's fixed cost (zeroing
# and scanning 256 counters per byte) dominates short rows such as a first convolution's 5x5 windows.
_SMALL_SORT = 32


@njit(cache=True, nogil=True)
def _insertion_argsort(bits, order, n):  # pragma: no cover
    """Sort ``order[:n]`` by the keys ``bits[:n]`` in place (``bits`` moves along), for short rows."""
    for i in range(1, n):
        kb = bits[i]
        ko = order[i]
        j = i - 1
        while j >= 0 and bits[j] > kb:
            bits[j + 1] = bits[j]
            order[j + 1] = order[j]
            j -= 1
        bits[j + 1] = kb
        order[j + 1] = ko


@njit(cache=True, nogil=True)
def _radix_argsort(bits, order, n, n_bytes, tmp_bits, tmp_order, count):  # pragma: no cover
    """Sort ``order[:n]`` by the unsigned keys ``bits[:n]`` (LSD radix, one byte per pass, passes where
    every key has the same byte skipped). For times >= 0 the IEEE bit patterns order like the values, so
    this sorts spike times in O(n) instead of O(n log n); the order within ties is irrelevant here."""
    for p in range(n_bytes):
        shift = 8 * p
        count[:] = 0
        for i in range(n):
            count[(bits[i] >> shift) & 255] += 1
        if count[(bits[0] >> shift) & 255] == n:
            continue
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (bits[i] >> shift) & 255
            pos = count[d]
            count[d] = pos + 1
            tmp_bits[pos] = bits[i]
            tmp_order[pos] = order[i]
        bits[:n] = tmp_bits[:n]
        order[:n] = tmp_order[:n]


@njit(cache=True, nogil=True)
def _gather_sorted(t_row, bits_row, n_bytes, scratch):  # pragma: no cover
    """Collect the finite times of ``t_row`` (``key``, their positions ``idx``) and sort them: afterwards
    ``key[order[m]]`` ascends over m < n. Returns n, the number of spikes."""
    key, idx, bits, order, tmp_bits, tmp_order, count = scratch
    n = 0
    for i in range(t_row.shape[0]):
        ti = t_row[i]
        if ti < math.inf:
            key[n] = ti
            idx[n] = i
            bits[n] = np.uint64(bits_row[i]) if ti != 0.0 else np.uint64(0)  # fold -0.0 into 0
            order[n] = n
            n += 1
    if n > _SMALL_SORT:
        _radix_argsort(bits, order, n, n_bytes, tmp_bits, tmp_order, count)
    elif n > 1:
        _insertion_argsort(bits, order, n)
    return n


@njit(cache=True, nogil=True)
def _fwd_rows(t_in, t_bits, n_bytes, weight_t, theta, t_max, t_out, w_sum, r0, r1, work, scratch):  # pragma: no cover
    key, idx, order = scratch[0], scratch[1], scratch[3]
    for r in range(r0, r1):
        n = _gather_sorted(t_in[r], t_bits[r], n_bytes, scratch)
        _walk(key, idx, order, n, weight_t, theta, t_max, t_out[r], w_sum[r], work)


@njit(cache=True, nogil=True)
def _walk(key, idx, order, n, weight_t, theta, t_max, out, ws, work):  # pragma: no cover
    """One row's neurons on its ``n`` input events, taken in the order ``order[:n]`` (ascending
    ``key``): event m has time ``key[order[m]]`` and weight row ``weight_t[idx[order[m]]]``. Writes the
    spike times ``out`` and summed causal weights ``ws``; ``work`` comes from ``_neuron_work``. A spike
    lies in (last causal input, next input]: ``_fire`` caps it at the next input's time, and one that
    rounds (in the dtype of ``out``) onto or before its last causal input's time moves to the next
    representable time above it here (see ``relpsp.core.dense``)."""
    a, b, last = work
    a[:] = 0.0
    b[:] = 0.0
    out[:] = math.inf
    ws[:] = 0.0
    remaining = a.shape[0]
    k = 0
    while k < n and remaining > 0:
        tk = key[order[k]]
        if tk > t_max:
            break
        k += 1
        while k < n and key[order[k]] == tk:  # every input of the group but the last
            _add_input(a, b, weight_t[idx[order[k - 1]]], tk)
            k += 1
        t_next = key[order[k]] if k < n else math.inf
        if _add_input_count(a, b, weight_t[idx[order[k - 1]]], tk, theta, t_next) > 0.0:
            remaining -= _fire(a, b, last, out, ws, theta, tk, t_next)
    if _any_on_or_before(out, last):  # rare: a separate pass keeps the common path vectorised
        fmt = np.finfo(out.dtype)
        for j in range(a.shape[0]):
            if out[j] <= last[j]:
                out[j] = _next_above(last[j], fmt.nmant, fmt.minexp)
    for j in range(a.shape[0]):
        if out[j] > t_max:
            out[j] = math.inf
            ws[j] = 0.0


@njit(cache=True, nogil=True)
def _neuron_work(n_out):  # pragma: no cover
    """Per-neuron work arrays of ``_walk``: A_j, B_j and the time of the last causal input. The last starts
    at -inf and then only ever holds finite input times, never +inf (silent neurons rely on it)."""
    return np.empty(n_out, np.float64), np.empty(n_out, np.float64), np.full(n_out, -math.inf)


@njit(cache=True, nogil=True)
def _sort_scratch(n):  # pragma: no cover
    """Work arrays for gathering and sorting up to ``n`` spike times: keys, indices, bit patterns, order,
    the radix sort's two buffers and its 256 counters."""
    return (
        np.empty(n, np.float64),
        np.empty(n, np.int64),
        np.empty(n, np.uint64),
        np.empty(n, np.int64),
        np.empty(n, np.uint64),
        np.empty(n, np.int64),
        np.empty(256, np.int64),
    )


@njit(parallel=True, cache=True)
def _fwd(t_in, t_bits, n_bytes, weight_t, theta, t_max, t_out, w_sum, n_chunks):  # pragma: no cover
    rows, n_in = t_in.shape
    n_out = weight_t.shape[1]
    step = (rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        r0, r1 = c * step, min(rows, (c + 1) * step)
        _fwd_rows(
            t_in,
            t_bits,
            n_bytes,
            weight_t,
            theta,
            t_max,
            t_out,
            w_sum,
            r0,
            r1,
            _neuron_work(n_out),
            _sort_scratch(n_in),
        )


# Lowest set bit of a uint64 -> its index, by de Bruijn multiplication (numba has no count-trailing-zeros).
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, np.int64)
for _i in range(64):
    _DEBRUIJN_INDEX[((1 << _i) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _i


@njit(cache=True, nogil=True)
def _conv_fwd_images(
    t_flat, t_bits, n_bytes, shape, kernel, stride, weight_t, theta, t_max, t_out, w_sum, b0, b1, work, scratch, window
):  # pragma: no cover
    """Images ``b0..b1`` of a convolution, sorting each image's spikes once instead of every window.

    The image's finite input times (``t_flat [B, C*Hp*Wp]``, padded) are sorted once and every position
    gets its rank. A window's events are then put in time order by setting one bit per event in a bitmap
    indexed by rank and reading the set bits from low to high: O(window + n/64) per window instead of a
    sort of the window. Output rows ``b * H_out * W_out + oy * W_out + ox`` (the im2col row order)."""
    c_in, hp, wp = shape
    kh, kw = kernel
    sh, sw = stride
    h_out = (hp - kh) // sh + 1
    w_out = (wp - kw) // sw + 1
    hw = hp * wp
    key, idx, order = scratch[0], scratch[1], scratch[3]
    rank, s_key, s_base, bitmap, row_key, row_idx, ident = window
    one = np.uint64(1)
    zero = np.uint64(0)
    for bi in range(b0, b1):
        rank[:] = -1
        n = _gather_sorted(t_flat[bi], t_bits[bi], n_bytes, scratch)
        for m in range(n):
            f = idx[order[m]]
            rank[f] = m
            s_key[m] = key[order[m]]
            # Weight row of this input in a window at (y0, x0) is s_base[m] - (y0 * kw + x0).
            c = f // hw
            y = (f - c * hw) // wp
            s_base[m] = (c * kh + y) * kw + (f - c * hw - y * wp)
        n_words = (n + 63) >> 6
        for oy in range(h_out):
            y0 = oy * sh
            for ox in range(w_out):
                x0 = ox * sw
                shift = y0 * kw + x0
                bitmap[:n_words] = zero
                for c in range(c_in):
                    for dy in range(kh):
                        base = (c * hp + y0 + dy) * wp + x0
                        for dx in range(kw):
                            r = rank[base + dx]
                            if r >= 0:
                                bitmap[r >> 6] |= one << np.uint64(r & 63)
                cnt = 0
                for wi in range(n_words):
                    word = bitmap[wi]
                    while word != zero:
                        low = word & (zero - word)
                        word ^= low
                        r = wi * 64 + _DEBRUIJN_INDEX[(low * _DEBRUIJN) >> np.uint64(58)]
                        row_idx[cnt] = s_base[r] - shift
                        row_key[cnt] = s_key[r]
                        cnt += 1
                row = (bi * h_out + oy) * w_out + ox
                _walk(row_key, row_idx, ident, cnt, weight_t, theta, t_max, t_out[row], w_sum[row], work)


@njit(parallel=True, cache=True)
def _conv_fwd(
    t_flat, t_bits, n_bytes, shape, kernel, stride, weight_t, theta, t_max, t_out, w_sum, n_chunks
):  # pragma: no cover
    n_img, n_flat = t_flat.shape
    n_out = weight_t.shape[1]
    n_k = weight_t.shape[0]
    step = (n_img + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        window = (
            np.empty(n_flat, np.int64),  # rank of every input position (-1: no spike)
            np.empty(n_flat, np.float64),  # sorted times
            np.empty(n_flat, np.int64),  # weight row of each sorted spike, for a window at (0, 0)
            np.empty((n_flat + 63) >> 6, np.uint64),  # the rank bitmap
            np.empty(n_k, np.float64),  # one window's times, in order
            np.empty(n_k, np.int64),  # ... and weight rows
            np.arange(n_k),  # the identity order
        )
        b0, b1 = ch * step, min(n_img, (ch + 1) * step)
        _conv_fwd_images(
            t_flat,
            t_bits,
            n_bytes,
            shape,
            kernel,
            stride,
            weight_t,
            theta,
            t_max,
            t_out,
            w_sum,
            b0,
            b1,
            _neuron_work(n_out),
            _sort_scratch(n_flat),
            window,
        )


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def _row_factors(grad_out, t_out, w_sum, w_sum_min, r, u, tj):  # pragma: no cover
    """Row ``r``'s u_j = dL/dt_j / max(W_j, w_sum_min) and t_j for firing neurons; u = 0 and t = 0 for
    silent ones, which makes every term vanish (input times are >= 0, so never causal). Returns whether
    any u_j is non-zero."""
    any_u = False
    for j in range(u.shape[0]):
        t = t_out[r, j]
        if t < math.inf:
            u[j] = grad_out[r, j] / max(w_sum[r, j], w_sum_min)
            tj[j] = t
            any_u = any_u or u[j] != 0.0
        else:
            u[j] = 0.0
            tj[j] = 0.0
    return any_u


@njit(cache=True, nogil=True, fastmath=_FLAGS, inline="always")
def _input_terms(ti, w, acc_i, u, tj):  # pragma: no cover
    """One finite input at ``ti`` with weight row ``w``: adds u_j (ti - t_j) to ``acc_i[j]`` for the
    neurons it is causal for (ti < t_j) and returns dL/dt_i = sum of u_j w_j over them."""
    s = 0.0
    for j in range(u.shape[0]):
        uj = u[j] if ti < tj[j] else 0.0
        s += uj * w[j]
        acc_i[j] += uj * (ti - tj[j])
    return s


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def _bwd_rows(grad_out, t_in, weight_t, t_out, w_sum, w_sum_min, g_in, acc, r0, r1, u, tj):  # pragma: no cover
    """Rows ``r0..r1`` of the dense backward; ``g_in`` is None when the input needs no gradient (numba
    compiles that case without the input-gradient sums, half of the inner loop)."""
    n_in = t_in.shape[1]
    for r in range(r0, r1):
        if not _row_factors(grad_out, t_out, w_sum, w_sum_min, r, u, tj):
            if g_in is not None:
                g_in[r, :] = 0.0
            continue
        for i in range(n_in):
            ti = t_in[r, i]
            if g_in is not None:
                g_in[r, i] = _input_terms(ti, weight_t[i], acc[i], u, tj) if ti < math.inf else 0.0
            elif ti < math.inf:
                ai = acc[i]
                for j in range(u.shape[0]):
                    ai[j] += (u[j] if ti < tj[j] else 0.0) * (ti - tj[j])


@njit(parallel=True, cache=True)
def _bwd(grad_out, t_in, weight_t, t_out, w_sum, w_sum_min, g_in, g_wt, n_chunks):  # pragma: no cover
    rows = t_in.shape[0]
    n_out = weight_t.shape[1]
    step = (rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        u = np.empty(n_out, np.float64)
        tj = np.empty(n_out, np.float64)
        r0, r1 = c * step, min(rows, (c + 1) * step)
        g_wt[c][:] = 0.0
        _bwd_rows(grad_out, t_in, weight_t, t_out, w_sum, w_sum_min, g_in, g_wt[c], r0, r1, u, tj)


@njit(cache=True, nogil=True, fastmath=_FLAGS)
def _conv_bwd_images(
    grad_out, t_flat, shape, kernel, stride, weight_t, t_out, w_sum, w_sum_min, g_flat, acc, b0, b1, u, tj
):  # pragma: no cover
    """Images ``b0..b1`` of a convolution's backward, read from the padded image (no im2col rows).

    Each window gets the dense backward of ``_bwd_rows``; its input gradient is added straight onto the
    image's gradient ``g_flat [B, C*Hp*Wp]`` (float64; what F.fold did after the rows' backward), its
    weight gradient into ``acc [C*kh*kw, C_out]``. ``g_flat`` may be None when the input needs none."""
    c_in, hp, wp = shape
    kh, kw = kernel
    sh, sw = stride
    h_out = (hp - kh) // sh + 1
    w_out = (wp - kw) // sw + 1
    for bi in range(b0, b1):
        t_img = t_flat[bi]
        for oy in range(h_out):
            y0 = oy * sh
            for ox in range(w_out):
                x0 = ox * sw
                r = (bi * h_out + oy) * w_out + ox
                if not _row_factors(grad_out, t_out, w_sum, w_sum_min, r, u, tj):
                    continue
                for c in range(c_in):
                    for dy in range(kh):
                        base = (c * hp + y0 + dy) * wp + x0
                        k0 = (c * kh + dy) * kw
                        for dx in range(kw):
                            ti = t_img[base + dx]
                            if ti < math.inf:
                                s = _input_terms(ti, weight_t[k0 + dx], acc[k0 + dx], u, tj)
                                if g_flat is not None:
                                    g_flat[bi, base + dx] += s


@njit(parallel=True, cache=True)
def _conv_bwd(
    grad_out, t_flat, shape, kernel, stride, weight_t, t_out, w_sum, w_sum_min, g_flat, g_wt, n_chunks
):  # pragma: no cover
    n_img = t_flat.shape[0]
    n_out = weight_t.shape[1]
    step = (n_img + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        u = np.empty(n_out, np.float64)
        tj = np.empty(n_out, np.float64)
        b0, b1 = c * step, min(n_img, (c + 1) * step)
        g_wt[c][:] = 0.0
        if g_flat is not None:
            g_flat[b0:b1] = 0.0
        _conv_bwd_images(
            grad_out, t_flat, shape, kernel, stride, weight_t, t_out, w_sum, w_sum_min, g_flat, g_wt[c], b0, b1, u, tj
        )


@njit(parallel=True, cache=True)
def _sum_transpose(parts, out):  # pragma: no cover
    """out[j, i] = sum_c parts[c, i, j], in the dtype of ``out``."""
    n_parts, n_in, n_out = parts.shape
    for j in prange(n_out):
        for i in range(n_in):
            acc = 0.0
            for c in range(n_parts):
                acc += parts[c, i, j]
            out[j, i] = acc


#: rows x inputs x neurons below which a call runs single-threaded (see the module docstring;
#: docs/PERFORMANCE.md has the measurement): a Yin-Yang 4-30-3 step at batch 32 is far below it, a step
#: of the MNIST MLP at batch 256 far above
SERIAL_WORK = 1 << 17


@contextlib.contextmanager
def _threads_for(work: int) -> Iterator[None]:
    """Run the block single-threaded when ``work`` is below ``SERIAL_WORK``; numba's thread count (a
    per-thread setting) is restored afterwards, also after an error."""
    threads = numba.get_num_threads()
    if work >= SERIAL_WORK or threads == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _chunks(rows: int) -> int:
    threads = numba.get_num_threads()
    # A few chunks per thread balance rows of uneven cost; never more chunks than rows.
    return max(1, min(rows, 4 * threads))


_local = threading.local()


def _workspace(name: str, shape: tuple[int, ...], dtype: DTypeLike, batch_first: bool = False) -> np.ndarray:
    """A reusable per-thread scratch array. Fresh multi-megabyte allocations each step cost page faults
    that, on the VMs we measured, took longer than the kernels themselves. With ``batch_first`` the first
    dimension is a batch size: one buffer, as large as the largest batch yet, serves every batch size as a
    leading slice (a buffer per size would grow without bound for a caller who varies it)."""
    cache = _local.__dict__.setdefault("buffers", {})
    # one buffer per layer shape: layers alternate every step
    key = (name, shape[1:] if batch_first else shape, np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None or (batch_first and buf.shape[0] < shape[0]):
        buf = np.empty(shape, dtype)
        cache[key] = buf
    return buf[: shape[0]] if batch_first else buf


@njit(parallel=True, cache=True)
def _transpose_into(src, dst):  # pragma: no cover
    n_out, n_in = src.shape
    for i in prange(n_in):
        for j in range(n_out):
            dst[i, j] = src[j, i]


def _transposed(weight: np.ndarray) -> np.ndarray:
    """``weight.T`` as a C-contiguous array ``[N_in, N_out]`` in the weight's dtype, in a reused buffer
    (the kernels accumulate in float64 whatever the weight dtype)."""
    wt = _workspace("weight_t", weight.shape[::-1], weight.dtype)
    _transpose_into(np.ascontiguousarray(weight), wt)
    return wt


def linear_fwd(t_in: np.ndarray, weight: np.ndarray, theta: float, t_max: float) -> tuple[np.ndarray, np.ndarray]:
    """``t_in [R, N_in]``, ``weight [N_out, N_in]`` (same float dtype) -> ``(t_out, w_sum)`` ``[R, N_out]``."""
    rows = t_in.shape[0]
    n_out = weight.shape[0]
    t_out = np.empty((rows, n_out), t_in.dtype)
    w_sum = np.empty((rows, n_out), t_in.dtype)
    if rows:
        t_c = np.ascontiguousarray(t_in)
        t_bits = t_c.view(np.uint32 if t_c.itemsize == 4 else np.uint64)
        with _threads_for(rows * t_in.shape[1] * n_out):
            wt = _transposed(weight)
            _fwd(t_c, t_bits, t_c.itemsize, wt, float(theta), float(t_max), t_out, w_sum, _chunks(rows))
    return t_out, w_sum


def conv_fwd(
    t_pad: np.ndarray, weight: np.ndarray, stride: tuple[int, int], theta: float, t_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Convolution forward on a padded input: ``t_pad [B, C, Hp, Wp]`` (padding = +inf), ``weight
    [C_out, C, kh, kw]`` -> ``(t_out, w_sum)`` ``[B * H_out * W_out, C_out]`` in im2col row order, equal to
    ``linear_fwd`` on the im2col rows (it sorts each image once instead of each window)."""
    b, c, hp, wp = t_pad.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"weight has {c_w} input channels, input has {c}")
    h_out = (hp - kh) // stride[0] + 1
    w_out = (wp - kw) // stride[1] + 1
    rows = b * h_out * w_out
    t_out = np.empty((rows, c_out), t_pad.dtype)
    w_sum = np.empty((rows, c_out), t_pad.dtype)
    if rows:
        t_c = np.ascontiguousarray(t_pad).reshape(b, -1)
        t_bits = t_c.view(np.uint32 if t_c.itemsize == 4 else np.uint64)
        with _threads_for(rows * c * kh * kw * c_out):
            n_chunks = max(1, min(b, 4 * numba.get_num_threads()))
            _conv_fwd(
                t_c,
                t_bits,
                t_c.itemsize,
                (c, hp, wp),
                (kh, kw),
                (int(stride[0]), int(stride[1])),
                _transposed(weight.reshape(c_out, -1)),
                float(theta),
                float(t_max),
                t_out,
                w_sum,
                n_chunks,
            )
    return t_out, w_sum


def linear_bwd(
    grad_out: np.ndarray,
    t_in: np.ndarray,
    weight: np.ndarray,
    t_out: np.ndarray,
    w_sum: np.ndarray,
    w_sum_min: float,
    need_in: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Returns ``(grad_t_in [R, N_in] or None when not ``need_in``, grad_weight [N_out, N_in])`` in the
    input dtype."""
    rows, n_in = t_in.shape
    n_out = weight.shape[0]
    g_in = np.empty((rows, n_in), t_in.dtype) if need_in else None
    g_w = np.empty((n_out, n_in), t_in.dtype)
    with _threads_for(rows * n_in * n_out):
        # One weight-gradient buffer per thread: more chunks would cost more zeroing and summing than they save.
        n_chunks = max(1, min(rows, numba.get_num_threads()))
        # Per-thread partial sums in the input dtype: half the memory traffic for float32 (each thread sums at
        # most R/threads rows; the final sum over threads runs in float64).
        g_wt = _workspace("g_wt", (n_chunks, n_in, n_out), t_in.dtype)
        _bwd(
            np.ascontiguousarray(grad_out),
            np.ascontiguousarray(t_in),
            _transposed(weight),
            np.ascontiguousarray(t_out),
            np.ascontiguousarray(w_sum),
            float(w_sum_min),
            g_in,
            g_wt,
            n_chunks,
        )
        _sum_transpose(g_wt, g_w)
    return g_in, g_w


def conv_bwd(
    grad_out: np.ndarray,
    t_pad: np.ndarray,
    weight: np.ndarray,
    t_out: np.ndarray,
    w_sum: np.ndarray,
    stride: tuple[int, int],
    w_sum_min: float,
    need_in: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Backward of ``conv_fwd``: ``grad_out``, ``t_out``, ``w_sum`` ``[B * H_out * W_out, C_out]`` (im2col
    row order), ``t_pad [B, C, Hp, Wp]``, ``weight [C_out, C, kh, kw]`` -> ``(grad_t_pad [B, C, Hp, Wp] or
    None, grad_weight [C_out, C, kh, kw])`` in the input dtype. The same sums as ``linear_bwd`` on the
    im2col rows followed by a fold, read from the image directly; each image's overlapping window
    gradients are summed in float64 before the cast."""
    b, c, hp, wp = t_pad.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"weight has {c_w} input channels, input has {c}")
    n_k = c * kh * kw
    g_flat = _workspace("conv_g_in", (b, c * hp * wp), np.float64, batch_first=True) if need_in else None
    g_w = np.empty((c_out, n_k), t_pad.dtype)
    if b:
        with _threads_for(t_out.shape[0] * n_k * c_out):
            n_chunks = max(1, min(b, numba.get_num_threads()))
            g_wt = _workspace("conv_g_wt", (n_chunks, n_k, c_out), t_pad.dtype)
            _conv_bwd(
                np.ascontiguousarray(grad_out),
                np.ascontiguousarray(t_pad).reshape(b, -1),
                (c, hp, wp),
                (kh, kw),
                (int(stride[0]), int(stride[1])),
                _transposed(weight.reshape(c_out, -1)),
                np.ascontiguousarray(t_out),
                np.ascontiguousarray(w_sum),
                float(w_sum_min),
                g_flat,
                g_wt,
                n_chunks,
            )
            _sum_transpose(g_wt, g_w)
    else:
        g_w[:] = 0.0
    g_in = g_flat.reshape(b, c, hp, wp).astype(t_pad.dtype) if g_flat is not None else None
    return g_in, g_w.reshape(weight.shape)
