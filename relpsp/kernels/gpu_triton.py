"""Triton kernels for the exact ReL-PSP dense op (GPU), same contract as ``relpsp.core.dense``.

Forward: the rows are sorted by ``torch.sort``; one program per (row, block of ``BLOCK_J`` neurons,
16 to 128 by the layer's width)
walks the sorted inputs, adding the weight row of each input (from the transposed weight, so that the
``BLOCK_J`` loads are contiguous) to running sums A_j, B_j in float64. At the end of every group of equal
input times, each live neuron with A_j > 0 and theta + B_j <= A_j * t_next fires at (theta + B_j) / A_j,
no later than t_next, rounded to the output dtype and moved above the group's time if it rounds onto it.
The walk stops when every neuron of the block has fired or the inputs up to ``t_max`` are used up; spikes
later than ``t_max`` are dropped. This is the same search, in the same order, as the CPU kernels.

Backward, with u_rj = dL/dt_rj / max(W_rj, w_sum_min) for firing neurons (0 otherwise) and the causal
mask c_rji = [t_ri < t_rj]: two masked contractions,

    dL/dt_ri = sum_j u_rj w_ji c_rji          (tiles of rows x inputs, loop over neurons)
    dL/dw_ji = sum_r u_rj (t_ri - t_rj) c_rji (tiles of neurons x inputs, loop over rows; the rows are
                                               split into blocks, whose partial sums torch adds, only
                                               as far as the tiles alone give too few programs)

accumulated in the input dtype. Nothing here materialises an ``R x N_in x N_out`` tensor. Kernels use
int32 offsets; the wrappers split the rows so that every offset into a row buffer fits (``_MAX_ELEMS``),
cap the dL/dw kernel's row splits so that its ``[splits, N_out, N_in]`` buffer does, and refuse a weight
of more than ``_MAX_ELEMS`` entries (a layer beyond about 46,000 x 46,000; the torch backend takes it).

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` set before import it also runs on CPU tensors
(slowly), which is how the tests check these kernels on machines without a GPU. Import only through
``relpsp.kernels.load_gpu_kernels`` (triton is an optional extra).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from relpsp.core.dense import backward_factors

__all__ = ["linear_bwd", "linear_fwd"]

BLOCK_J_FWD = 128  # the most neurons per forward program (fewer for smaller layers: ``fwd_blocks``)
BLOCK_K_FWD = 16
#: Forward variant: "auto" (the default: "chunked" for rows of at most ``CHUNKED_MAX_INPUTS`` inputs, else
#: "loop"), "chunked" (``BLOCK_K_FWD`` inputs per step) or "loop" (one input per step); the environment
#: variable RELPSP_TRITON_FWD overrides it (for benchmarks). Measured on an H200 at batch 256
#: (docs/PERFORMANCE.md): loop 0.9 ms against chunked 3.6 ms for the 784-800 layer's forward, 3.4 against
#: 4.2 ms for the 16->32 C5 convolution (400 inputs), but 3.2 against 2.7 ms for the 1->16 C5 one (25).
FWD_VARIANT = os.environ.get("RELPSP_TRITON_FWD", "auto")
CHUNKED_MAX_INPUTS = 32
BLOCK_R_GIN = 32
BLOCK_I = 64
BLOCK_J_GW = 64
#: dL/dw: about this many programs in all; rows are split into blocks (whose partial sums torch adds)
#: only as far as the (neuron x input) tiles alone fall short of it, into about MIN_SPLIT_ROWS rows or more
#: each (rows // MIN_SPLIT_ROWS rounded up, so a split may hold fewer).
TARGET_PROGRAMS = 1024
MIN_SPLIT_ROWS = 64
_MAX_ELEMS = 2**31 - 1  # largest int32 offset into any [rows, features] or [splits, M, N] buffer


def _row_splits(rows: int, n_out: int, n_in: int) -> tuple[int, int]:
    """``(rows per split, number of splits)`` for the dL/dw kernel (see ``TARGET_PROGRAMS``)."""
    tiles = triton.cdiv(n_out, BLOCK_J_GW) * triton.cdiv(n_in, BLOCK_I)
    splits = max(1, min(triton.cdiv(rows, MIN_SPLIT_ROWS), triton.cdiv(TARGET_PROGRAMS, tiles)))
    splits = min(splits, max(1, _MAX_ELEMS // max(1, n_out * n_in)))  # [splits, M, N] offsets fit int32
    per = max(1, triton.cdiv(rows, splits))
    return per, max(1, triton.cdiv(rows, per))


def fwd_variant(n_in: int) -> str:
    """The forward kernel for rows of ``n_in`` inputs: ``FWD_VARIANT``, with "auto" resolved by
    ``CHUNKED_MAX_INPUTS``."""
    if FWD_VARIANT not in ("auto", "chunked", "loop"):
        raise ValueError(f"RELPSP_TRITON_FWD must be 'auto', 'chunked' or 'loop', got {FWD_VARIANT!r}")
    if FWD_VARIANT == "auto":
        return "chunked" if n_in <= CHUNKED_MAX_INPUTS else "loop"
    return FWD_VARIANT


def fwd_blocks(n_out: int) -> tuple[int, int]:
    """``(BLOCK_J, num_warps)`` of the forward programs for a layer of ``n_out`` neurons: the smallest power
    of two from 16 to ``BLOCK_J_FWD`` that covers the layer (a 16-channel convolution's programs were 7/8
    idle at 128), and one warp per 512 elements of the chunked variant's ``[BLOCK_K, BLOCK_J]`` tile (1 to
    4). The environment variable RELPSP_TRITON_FWD_BLOCK_J (a power of two, 16 to 128) fixes BLOCK_J, for
    benchmarks."""
    fixed = os.environ.get("RELPSP_TRITON_FWD_BLOCK_J")
    if fixed:
        if fixed not in ("16", "32", "64", "128"):
            raise ValueError(f"RELPSP_TRITON_FWD_BLOCK_J must be 16, 32, 64 or 128, got {fixed!r}")
        block_j = int(fixed)
    else:
        block_j = min(BLOCK_J_FWD, max(16, triton.next_power_of_2(max(n_out, 1))))
    return block_j, max(1, min(4, block_j * BLOCK_K_FWD // 512))


def _row_chunks(rows: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _MAX_ELEMS // max(width, 1) - 1)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


@triton.jit
def _store_spikes(out_ptr, wsum_ptr, dst, mask, t_fire, w_sum, t_last, t_max, F64: tl.constexpr):
    """Round the spikes to the output dtype, move one that rounds onto or before its last causal input
    (``t_last``, negative for silent neurons) to the next representable time above it (see
    ``relpsp.core.dense``), drop spikes later than ``t_max`` (W_j = 0 for them) and store one block."""
    t_out = t_fire.to(out_ptr.dtype.element_ty)
    last = tl.where(t_last > 0.0, t_last, 0.0).to(out_ptr.dtype.element_ty)  # -0.0 -> +0.0 for the bits
    if F64:  # the next float above a number >= 0 has the next bit pattern
        above = (last.to(tl.int64, bitcast=True) + 1).to(tl.float64, bitcast=True)
    else:
        above = (last.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)
    t_out = tl.where(t_out <= last, above, t_out)
    late = t_out > t_max
    t_out = tl.where(late, float("inf"), t_out)
    w_sum = tl.where(late, 0.0, w_sum)
    tl.store(out_ptr + dst, t_out, mask=mask)
    tl.store(wsum_ptr + dst, w_sum.to(wsum_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_kernel(
    ts_ptr,  # [R, N] input times sorted ascending per row (+inf last)
    idx_ptr,  # [R, N] int32: input index of each sorted time
    n_use_ptr,  # [R] int32: number of finite inputs <= t_max
    wt_ptr,  # [N, M] weight transposed
    params_ptr,  # [2] float64: theta, t_max
    out_ptr,  # [R, M] spike times
    wsum_ptr,  # [R, M] W_j of firing neurons, 0 elsewhere
    N,
    M,
    BLOCK_J: tl.constexpr,
    F64: tl.constexpr,
):
    r = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = j < M
    theta = tl.load(params_ptr)
    t_max = tl.load(params_ptr + 1)
    n_use = tl.load(n_use_ptr + r)
    row = r * N
    a = tl.zeros([BLOCK_J], dtype=tl.float64)
    b = tl.zeros([BLOCK_J], dtype=tl.float64)
    t_fire = tl.full([BLOCK_J], float("inf"), dtype=tl.float64)
    w_sum = tl.zeros([BLOCK_J], dtype=tl.float64)
    t_last = tl.full([BLOCK_J], -1.0, dtype=tl.float64)
    live = jm
    n_live = tl.sum(live.to(tl.int32), axis=0)
    k = 0
    while (k < n_use) & (n_live > 0):
        tk = tl.load(ts_ptr + row + k).to(tl.float64)
        i = tl.load(idx_ptr + row + k)
        w = tl.load(wt_ptr + i * M + j, mask=jm, other=0.0).to(tl.float64)
        a += w
        b += w * tk
        t_next = tl.load(ts_ptr + row + k + 1, mask=k + 1 < N, other=float("inf")).to(tl.float64)
        if t_next > tk:  # the end of a group of equal input times: the only place a neuron may fire
            cross = live & (a > 0.0) & (theta + b <= a * t_next)
            t_fire = tl.where(cross, tl.minimum((theta + b) / a, t_next), t_fire)
            w_sum = tl.where(cross, a, w_sum)
            t_last = tl.where(cross, tk, t_last)
            live = live & (~cross)
            n_live = tl.sum(live.to(tl.int32), axis=0)
        k += 1
    _store_spikes(out_ptr, wsum_ptr, r * M + j, jm, t_fire, w_sum, t_last, t_max, F64)


@triton.jit
def _fwd_kernel_chunked(
    ts_ptr,
    idx_ptr,
    n_use_ptr,
    wt_ptr,
    params_ptr,
    out_ptr,
    wsum_ptr,
    N,
    M,
    BLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    F64: tl.constexpr,
):
    """Same search as ``_fwd_kernel``, ``BLOCK_K`` inputs at a time: the weight rows of a chunk are loaded
    as one ``[BLOCK_K, BLOCK_J]`` tile, prefix sums come from ``tl.cumsum``, and each neuron takes the
    first valid prefix of the chunk. Fewer dependent loads than the one-input loop but more arithmetic
    per input: the faster of the two only for short rows (``FWD_VARIANT``)."""
    r = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = j < M
    theta = tl.load(params_ptr)
    t_max = tl.load(params_ptr + 1)
    n_use = tl.load(n_use_ptr + r)
    row = r * N
    kr = tl.arange(0, BLOCK_K)
    a = tl.zeros([BLOCK_J], dtype=tl.float64)
    b = tl.zeros([BLOCK_J], dtype=tl.float64)
    t_fire = tl.full([BLOCK_J], float("inf"), dtype=tl.float64)
    w_sum = tl.zeros([BLOCK_J], dtype=tl.float64)
    t_last = tl.full([BLOCK_J], -1.0, dtype=tl.float64)
    live = jm
    n_live = tl.sum(live.to(tl.int32), axis=0)
    k0 = 0
    while (k0 < n_use) & (n_live > 0):
        kk = k0 + kr
        km = kk < n_use
        tk = tl.load(ts_ptr + row + kk, mask=km, other=float("inf")).to(tl.float64)
        ik = tl.load(idx_ptr + row + kk, mask=km, other=0)
        t_next = tl.load(ts_ptr + row + kk + 1, mask=kk + 1 < N, other=float("inf")).to(tl.float64)
        w = tl.load(wt_ptr + ik[:, None] * M + j[None, :], mask=km[:, None] & jm[None, :], other=0.0).to(tl.float64)
        ca = a[None, :] + tl.cumsum(w, axis=0)
        cb = b[None, :] + tl.cumsum(w * tl.where(km, tk, 0.0)[:, None], axis=0)
        group_end = km & (t_next > tk)
        cross = group_end[:, None] & live[None, :] & (ca > 0.0) & (theta + cb <= ca * t_next[:, None])
        first = tl.min(tl.where(cross, kr[:, None], BLOCK_K), axis=0)
        fires = first < BLOCK_K
        pick = kr[:, None] == first[None, :]
        a_pick = tl.sum(tl.where(pick, ca, 0.0), axis=0)
        b_pick = tl.sum(tl.where(pick, cb, 0.0), axis=0)
        t_next_pick = tl.sum(tl.where(pick, t_next[:, None], 0.0), axis=0)
        t_fire = tl.where(fires, tl.minimum((theta + b_pick) / tl.where(fires, a_pick, 1.0), t_next_pick), t_fire)
        w_sum = tl.where(fires, a_pick, w_sum)
        t_last = tl.where(fires, tl.sum(tl.where(pick, tk[:, None], 0.0), axis=0), t_last)
        live = live & (~fires)
        n_live = tl.sum(live.to(tl.int32), axis=0)
        a = a + tl.sum(w, axis=0)
        b = b + tl.sum(w * tl.where(km, tk, 0.0)[:, None], axis=0)
        k0 += BLOCK_K
    _store_spikes(out_ptr, wsum_ptr, r * M + j, jm, t_fire, w_sum, t_last, t_max, F64)


@triton.jit
def _grad_in_kernel(
    ut_ptr,  # [M, R] u transposed
    tot_ptr,  # [M, R] output times transposed, 0 where silent
    ti_ptr,  # [R, N] input times
    w_ptr,  # [M, N] weight
    gi_ptr,  # [R, N] out
    R,
    M,
    N,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    rm = r < R
    im = i < N
    offs = r[:, None] * N + i[None, :]
    ti = tl.load(ti_ptr + offs, mask=rm[:, None] & im[None, :], other=float("inf"))
    acc = tl.zeros([BLOCK_R, BLOCK_I], dtype=gi_ptr.dtype.element_ty)
    for jj in range(0, M):
        base = jj * R
        u = tl.load(ut_ptr + base + r, mask=rm, other=0.0)
        to = tl.load(tot_ptr + base + r, mask=rm, other=0.0)
        w = tl.load(w_ptr + jj * N + i, mask=im, other=0.0)
        acc += tl.where(ti < to[:, None], u[:, None] * w[None, :], 0.0)
    tl.store(gi_ptr + offs, acc, mask=rm[:, None] & im[None, :])


@triton.jit
def _grad_w_kernel(
    u_ptr,  # [R, M]
    to_ptr,  # [R, M] output times, 0 where silent
    ti_ptr,  # [R, N] input times
    part_ptr,  # [S, M, N] partial sums, one slice per row block
    R,
    M,
    N,
    ROWS,
    BLOCK_J: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    s = tl.program_id(2)
    jm = j < M
    im = i < N
    acc = tl.zeros([BLOCK_J, BLOCK_I], dtype=part_ptr.dtype.element_ty)
    r0 = s * ROWS
    r1 = tl.minimum(r0 + ROWS, R)
    for rr in range(r0, r1):  # offsets fit in int32: the wrapper splits larger inputs
        u = tl.load(u_ptr + rr * M + j, mask=jm, other=0.0)
        to = tl.load(to_ptr + rr * M + j, mask=jm, other=0.0)
        ti = tl.load(ti_ptr + rr * N + i, mask=im, other=float("inf"))
        causal = ti[None, :] < to[:, None]
        acc += tl.where(causal, u[:, None] * (ti[None, :] - to[:, None]), 0.0)
    dst = s * M * N + j[:, None] * N + i[None, :]
    tl.store(part_ptr + dst, acc, mask=jm[:, None] & im[None, :])


def _check_weight_size(weight: Tensor) -> None:
    if weight.numel() > _MAX_ELEMS:
        n_out, n_in = weight.shape
        raise ValueError(
            f"the Triton kernels address the weight with int32 offsets: {n_out} x {n_in} = {weight.numel():,} "
            f"weights is more than {_MAX_ELEMS:,}; use backend 'torch' for this layer"
        )


def linear_fwd(t_in: Tensor, weight: Tensor, theta: float, t_max: float) -> tuple[Tensor, Tensor]:
    """``t_in [R, N_in]``, ``weight [N_out, N_in]`` (same dtype and device) -> ``(t_out, w_sum)``."""
    _check_weight_size(weight)
    chunks = _row_chunks(t_in.shape[0], max(t_in.shape[1], weight.shape[0]))
    if len(chunks) > 1:
        parts = [_linear_fwd(t_in[a:b], weight, theta, t_max) for a, b in chunks]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _linear_fwd(t_in, weight, theta, t_max)


def _linear_fwd(t_in: Tensor, weight: Tensor, theta: float, t_max: float) -> tuple[Tensor, Tensor]:
    rows, n_in = t_in.shape
    n_out = weight.shape[0]
    t_out = torch.empty((rows, n_out), dtype=t_in.dtype, device=t_in.device)
    w_sum = torch.empty_like(t_out)
    if rows == 0 or n_out == 0:
        return t_out, w_sum
    if n_in == 0:
        return t_out.fill_(math.inf), w_sum.zero_()
    ts, order = torch.sort(t_in.contiguous(), dim=1, stable=True)  # ties in index order, as on the CPU
    n_use = (ts.double() <= t_max).sum(dim=1, dtype=torch.int32)  # +inf never counts; t_max not rounded
    params = torch.tensor([float(theta), float(t_max)], dtype=torch.float64, device=t_in.device)
    block_j, warps = fwd_blocks(n_out)
    grid = (rows, triton.cdiv(n_out, block_j))
    args = (ts, order.to(torch.int32), n_use, weight.t().contiguous(), params, t_out, w_sum, n_in, n_out)
    f64 = t_in.dtype == torch.float64
    variant = fwd_variant(n_in)
    if variant == "loop":
        _fwd_kernel[grid](*args, BLOCK_J=block_j, F64=f64, num_warps=warps)
    else:
        _fwd_kernel_chunked[grid](*args, BLOCK_K=BLOCK_K_FWD, BLOCK_J=block_j, F64=f64, num_warps=warps)
    return t_out, w_sum


def linear_bwd(
    grad_out: Tensor,
    t_in: Tensor,
    weight: Tensor,
    t_out: Tensor,
    w_sum: Tensor,
    w_sum_min: float,
    need_in: bool = True,
    need_w: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """``(dL/dt_in [R, N_in] or None, dL/dweight [N_out, N_in] or None)`` in the input dtype."""
    _check_weight_size(weight)
    n_in, n_out = t_in.shape[1], weight.shape[0]
    chunks = _row_chunks(t_in.shape[0], max(n_in, n_out))
    if len(chunks) > 1:
        parts = [
            _linear_bwd(grad_out[a:b], t_in[a:b], weight, t_out[a:b], w_sum[a:b], w_sum_min, need_in, need_w)
            for a, b in chunks
        ]
        g_in = torch.cat([p[0] for p in parts]) if need_in else None  # type: ignore[misc]
        g_w = torch.stack([p[1] for p in parts]).sum(0) if need_w else None  # type: ignore[misc]
        return g_in, g_w
    return _linear_bwd(grad_out, t_in, weight, t_out, w_sum, w_sum_min, need_in, need_w)


def _linear_bwd(
    grad_out: Tensor,
    t_in: Tensor,
    weight: Tensor,
    t_out: Tensor,
    w_sum: Tensor,
    w_sum_min: float,
    need_in: bool,
    need_w: bool,
) -> tuple[Tensor | None, Tensor | None]:
    rows, n_in = t_in.shape
    n_out = weight.shape[0]
    u, to = (x.contiguous() for x in backward_factors(grad_out, t_out, w_sum, w_sum_min))
    t_in = t_in.contiguous()
    g_in = g_w = None
    if need_in:
        g_in = torch.empty_like(t_in)
        if rows and n_in:
            grid = (triton.cdiv(rows, BLOCK_R_GIN), triton.cdiv(n_in, BLOCK_I))
            _grad_in_kernel[grid](
                u.t().contiguous(), to.t().contiguous(), t_in, weight.contiguous(), g_in, rows, n_out, n_in,
                BLOCK_R=BLOCK_R_GIN, BLOCK_I=BLOCK_I,
            )  # fmt: skip
    if need_w:
        rows_per_split, splits = _row_splits(rows, n_out, n_in)
        parts = torch.zeros((splits, n_out, n_in), dtype=t_in.dtype, device=t_in.device)
        if rows and n_in and n_out:
            grid_w = (triton.cdiv(n_out, BLOCK_J_GW), triton.cdiv(n_in, BLOCK_I), splits)
            _grad_w_kernel[grid_w](
                u, to, t_in, parts, rows, n_out, n_in, ROWS=rows_per_split, BLOCK_J=BLOCK_J_GW, BLOCK_I=BLOCK_I
            )
        g_w = parts.sum(0)
    return g_in, g_w
