"""Exact ReL-PSP dense layer: causal-set search, closed form and STDBP gradients in plain torch.

Model (Zhang et al., IEEE TNNLS 2021, arXiv:2003.11837). Neuron j receives spike times t_i
(``+inf`` = no spike) and has potential

    V_j(t) = sum_i w_ji * max(0, t - t_i)

It fires once, at the first t with V_j(t) = theta. With the causal set C_j = {i : t_i < t_j} and
W_j = sum_{i in C_j} w_ji > 0 the firing time has the closed form

    t_j = (theta + sum_{i in C_j} w_ji t_i) / W_j

Search: sort the inputs; walk prefixes k accumulating A_k = sum w and B_k = sum w t; the first prefix
with A_k > 0 and t* = (theta + B_k) / A_k <= t_(k+1) gives the spike (inputs with equal times enter
together, so only the last prefix of a tie group is a candidate). A spike whose returned time (in the
input dtype) is later than ``t_max`` (compared in float64, not rounded to the dtype) is dropped. Every
implementation (this one, the reference twin, the numba and Triton kernels) sums A and B in float64
whatever the input dtype and rounds the spike to it at the end. The CPU implementations also sum in one
order (ascending time, equal times in input order, one rounding per product and per addition), so that
even a crossing within a rounding step of an input is decided alike (tests/test_dense.py); the compiled
Triton kernel's tiled scan may sum in another order and round differently there.

Rounding: the search found V(t_k) < theta and the crossing no later than t_(k+1), so the spike lies in
(t_k, t_(k+1)], t_k being the last causal input. The rounded t* can fall outside when it lies within a
rounding step of either end; every implementation then returns the nearest time inside: t_(k+1), or the
next representable time above t_k (at most one rounding step from the exact time either way). The
backward's causal set t_i < t_j is then exactly the forward's.

STDBP (implicit function theorem, dV/dt = W_j at t_j):

    dt_j/dt_i = w_ji / W_j,   dt_j/dw_ji = (t_i - t_j) / W_j   for i in C_j, else 0.

Guard: the backward divides by max(W_j, w_sum_min) (``W_SUM_MIN`` by default). A firing neuron always
has W_j > 0, but W_j -> 0+ makes 1/W_j explode; the clamp bounds every local derivative by
1 / w_sum_min times the weight or time involved. Forward values are never changed by the guard.

Functions here work on 2-D rows: ``t_in [R, N_in]``, ``weight [N_out, N_in]`` -> ``[R, N_out]``.
Convolutions reuse them on im2col patches (see ``relpsp.functional``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "W_SUM_MIN",
    "after_last_causal",
    "backward_factors",
    "relpsp_linear_bwd_torch",
    "relpsp_linear_fwd_torch",
    "relpsp_linear_ref",
]

#: Lower clamp of W_j in every backward pass (see module docstring). With theta = 1 and input times
#: of order 1, a neuron with W_j below this fires at t > 1000, far outside any useful window.
W_SUM_MIN = 1e-3

# Elements per intermediate block of the torch path (R_block * K * N_out), about 32 MB in float64.
_BLOCK_ELEMS = 1 << 22


def after_last_causal(t_out: Tensor, t_last: Tensor) -> Tensor:
    """``t_out`` where it lies after ``t_last`` (the time of the last causal input, ``-inf`` for silent
    neurons), else the next representable time above ``t_last``: the exact spike lies strictly after its
    last causal input, and the rounded closed form can land on it (see the module docstring)."""
    return torch.where(t_out <= t_last, torch.nextafter(t_last, torch.full_like(t_last, math.inf)), t_out)


def _search_block(
    t_sorted: Tensor, order: Tensor, weight_t: Tensor, theta: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """First valid prefix for a block of rows. ``t_sorted``/``order`` ``[R, n]`` (ascending, inf last),
    ``weight_t [N_in, N_out]`` in float64. Returns ``(t_out, w_sum, t_last)`` ``[R, N_out]`` before the t_max cut;
    ``t_last`` is the time of the last causal input (``-inf`` for silent neurons)."""
    rows, n = t_sorted.shape
    n_out = weight_t.shape[1]
    # A and B in float64 whatever the input dtype, as in the numba and Triton kernels: in float32 the
    # prefix sums' rounding depends on the summation order (a GPU's parallel scan differs from a CPU's
    # loop), and a late spike (small W) magnifies it; every implementation then makes the same decisions.
    acc = torch.float64
    inf = torch.tensor(math.inf, dtype=acc, device=t_sorted.device)
    t_out = torch.full((rows, n_out), math.inf, dtype=acc, device=t_sorted.device)
    w_sum = torch.zeros((rows, n_out), dtype=acc, device=t_sorted.device)
    t_last = torch.full((rows, n_out), -math.inf, dtype=acc, device=t_sorted.device)
    fired = torch.zeros((rows, n_out), dtype=torch.bool, device=t_sorted.device)
    carry_a = torch.zeros((rows, n_out), dtype=acc, device=t_sorted.device)
    carry_b = torch.zeros((rows, n_out), dtype=acc, device=t_sorted.device)
    t_sorted_acc = t_sorted.to(acc)
    t_next_all = torch.cat([t_sorted_acc[:, 1:], inf.expand(rows, 1)], dim=1)
    # Only the last member of a group of equal times may end a prefix.
    group_end = t_next_all > t_sorted_acc
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        ts = t_sorted_acc[:, c0:c1]
        live = torch.isfinite(ts)  # [R, K]
        wg = weight_t[order[:, c0:c1]]  # [R, K, N_out], already float64
        wg = wg * live.unsqueeze(-1)
        # The carry enters the scan as its first term, so the sums are formed in one left-to-right order
        # (A + w_1 + w_2 ...), as in the reference twin's single scan and the kernels' loops.
        a = torch.cat([carry_a.unsqueeze(1), wg], 1).cumsum(1)[:, 1:]
        wt = wg * torch.where(live, ts, 0).unsqueeze(-1)
        b = torch.cat([carry_b.unsqueeze(1), wt], 1).cumsum(1)[:, 1:]
        cand = torch.minimum((theta + b) / a, t_next_all[:, c0:c1].unsqueeze(-1))  # see "Rounding" above
        # theta + B <= A t_next, not cand <= t_next: the rounded quotient can land on t_next when the exact
        # crossing lies just after it (the numba and Triton kernels test the same product form).
        ok = (a > 0) & (theta + b <= a * t_next_all[:, c0:c1].unsqueeze(-1))
        ok &= (group_end[:, c0:c1] & live).unsqueeze(-1)
        any_ok = ok.any(1)
        first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first True along K
        new = any_ok & ~fired
        t_out = torch.where(new, cand.gather(1, first).squeeze(1), t_out)
        w_sum = torch.where(new, a.gather(1, first).squeeze(1), w_sum)
        t_last = torch.where(new, ts.gather(1, first.squeeze(1)), t_last)
        fired |= any_ok
        carry_a = a[:, -1]
        carry_b = b[:, -1]
        if bool(fired.all()):
            break
    return t_out, w_sum, t_last


def relpsp_linear_fwd_torch(
    t_in: Tensor, weight: Tensor, theta: float = 1.0, t_max: float = math.inf
) -> tuple[Tensor, Tensor]:
    """Exact forward without a ``[R, N_in, N_out]`` intermediate: sort once, then scan sorted
    positions in chunks carrying the prefix sums, over blocks of rows.

    ``t_in [R, N_in]``, ``weight [N_out, N_in]`` -> ``(t_out, w_sum)`` both ``[R, N_out]``;
    ``w_sum`` is W_j of firing neurons and 0 elsewhere.
    """
    rows, _n_in = t_in.shape
    n_out = weight.shape[0]
    t_sorted, order = t_in.sort(dim=1, stable=True)
    n_active = int(torch.isfinite(t_sorted).sum(1).max()) if rows else 0
    t_out = torch.full((rows, n_out), math.inf, dtype=t_in.dtype, device=t_in.device)
    w_sum = torch.zeros((rows, n_out), dtype=t_in.dtype, device=t_in.device)
    if n_active == 0 or n_out == 0:
        return t_out, w_sum
    t_sorted = t_sorted[:, :n_active]
    order = order[:, :n_active]
    weight_t = weight.t().to(torch.float64).contiguous()  # converted once, not per gathered block
    chunk = max(1, min(n_active, 64))
    row_block = max(1, _BLOCK_ELEMS // (chunk * max(n_out, 1)))
    for r0 in range(0, rows, row_block):
        r1 = min(rows, r0 + row_block)
        tb, wb, lb = _search_block(t_sorted[r0:r1], order[r0:r1], weight_t, theta, chunk)
        tb = after_last_causal(tb.to(t_in.dtype), lb.to(t_in.dtype))  # the inputs' dtype holds t_last exactly
        keep = tb.double() <= t_max  # the rounded spike against t_max itself (not t_max rounded to dtype)
        t_out[r0:r1] = torch.where(keep, tb, math.inf)
        w_sum[r0:r1] = torch.where(keep, wb, 0).to(t_in.dtype)
    return t_out, w_sum


def backward_factors(grad_out: Tensor, t_out: Tensor, w_sum: Tensor, w_sum_min: float) -> tuple[Tensor, Tensor]:
    """``(u, t_fired)``: u_j = dL/dt_j / max(W_j, w_sum_min) for firing neurons, 0 for silent ones, and the
    output times with silent neurons set to 0, so that no input (t_i >= 0) counts as causal for them.
    Every backward (torch here, the Triton kernels) starts from these."""
    fired = torch.isfinite(t_out)
    zero = torch.zeros((), dtype=t_out.dtype, device=t_out.device)
    return torch.where(fired, grad_out / w_sum.clamp_min(w_sum_min), zero), torch.where(fired, t_out, zero)


def relpsp_linear_bwd_torch(
    grad_out: Tensor,
    t_in: Tensor,
    weight: Tensor,
    t_out: Tensor,
    w_sum: Tensor,
    w_sum_min: float = W_SUM_MIN,
    need_t_in: bool = True,
    need_weight: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """STDBP backward over blocks of rows with an explicit causal mask ``[R_block, N_out, N_in]``.

    Returns ``(grad_t_in [R, N_in], grad_weight [N_out, N_in])`` (None where not needed).
    """
    rows, n_in = t_in.shape
    n_out = weight.shape[0]
    u, t_out_f = backward_factors(grad_out, t_out, w_sum, w_sum_min)  # dL/dt_j / W_j; silent: t = 0
    t_in_f = torch.where(torch.isfinite(t_in), t_in, 0)
    g_in = torch.zeros_like(t_in) if need_t_in else None
    g_w = torch.zeros_like(weight) if need_weight else None
    block = max(1, _BLOCK_ELEMS // max(1, n_in * n_out))
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        causal = t_in[r0:r1].unsqueeze(1) < t_out[r0:r1].unsqueeze(2)  # [R, N_out, N_in]
        m = u[r0:r1].unsqueeze(2) * causal  # u_j on causal synapses
        if g_in is not None:
            g_in[r0:r1] = (m * weight).sum(1)
        if g_w is not None:
            g_w += torch.einsum("rji,ri->ji", m, t_in_f[r0:r1])
            g_w -= torch.einsum("rji,rj->ji", m, t_out_f[r0:r1])
    return g_in, g_w


def relpsp_linear_ref(
    t_in: Tensor,
    weight: Tensor,
    *,
    theta: float = 1.0,
    t_max: float = math.inf,
    w_sum_min: float = W_SUM_MIN,
) -> Tensor:
    """Reference twin of ``relpsp_linear``: differentiated by autograd, ``[R, N_in] -> [R, N_out]``.

    The causal set is found under ``no_grad`` with a dense ``[R, N_out, N_in]`` prefix search; the
    closed form is then written so that autograd yields STDBP with the same W_j guard:

        t_j = t_j* + (n_j - n_j*) / max(W_j*, w_sum_min),   n_j = theta + sum_C w_ji t_i - t_j* W_j

    where * marks detached values. The added term is exactly zero in value (the value is the searched
    t_j*, rounding rule of the module docstring included), and its derivatives are (t_i - t_j)/W_j and
    w_ji/W_j on causal synapses: the closed form's own derivatives wherever W_j >= w_sum_min. Memory is
    O(R N_in N_out): use it for checks, not training.
    """
    if t_in.shape[1] == 0:  # no inputs: every neuron is silent (as in relpsp_linear)
        return torch.full((t_in.shape[0], weight.shape[0]), math.inf, dtype=t_in.dtype, device=t_in.device)
    with torch.no_grad():
        t_sorted, order = t_in.sort(dim=1, stable=True)
        ts64 = t_sorted.double()  # the search in float64 whatever the dtype, as in every backend
        wg = weight.t().double()[order]  # [R, N_in, N_out]
        live = torch.isfinite(t_sorted).unsqueeze(-1)
        wg = wg * live
        a = wg.cumsum(1)
        b = (wg * torch.where(live, ts64.unsqueeze(-1), 0)).cumsum(1)
        t_next = torch.cat([ts64[:, 1:], torch.full_like(ts64[:, :1], math.inf)], 1)
        cand = torch.minimum((theta + b) / a, t_next.unsqueeze(-1))
        ok = (a > 0) & (theta + b <= a * t_next.unsqueeze(-1)) & live & (t_next > ts64).unsqueeze(-1)
        first = ok.to(torch.uint8).argmax(1, keepdim=True)
        t_star = torch.where(ok.any(1), cand.gather(1, first).squeeze(1), math.inf).to(t_in.dtype)
        t_last = torch.where(ok.any(1), t_sorted.gather(1, first.squeeze(1)), -math.inf)
        t_star = after_last_causal(t_star, t_last)
        t_star = torch.where(t_star.double() <= t_max, t_star, math.inf)
        fired = torch.isfinite(t_star)
        causal = (t_in.unsqueeze(1) < t_star.unsqueeze(2)) & fired.unsqueeze(2)  # [R, N_out, N_in]
        w_det = (weight.unsqueeze(0) * causal).sum(2)
        denom = torch.where(fired, w_det.clamp_min(w_sum_min), 1)
        t_det = torch.where(fired, t_star, 0)
    t_in_f = torch.where(causal, t_in.unsqueeze(1), 0)
    w_c = weight.unsqueeze(0) * causal
    num = theta + (w_c * t_in_f).sum(2) - t_det * w_c.sum(2)
    t_out = t_det + torch.where(fired, (num - num.detach()) / denom, 0)
    return torch.where(fired, t_out, math.inf)
