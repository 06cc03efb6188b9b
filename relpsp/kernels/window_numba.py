"""Compiled CPU kernels of the windowed neuron's closed form (``relpsp.window.window_times``); imported lazily.

With ``den = 1 + W_j`` and ``num = e_l + sum_i w_ji t_i`` the spike time is ``clamp(num / den, s_l, e_l)``
where ``den > 0``, else ``s_l`` if ``den * s_l - num >= 0`` and ``e_l`` otherwise. Its gradient passes
where ``den > 0`` and the quotient lies in ``[s_l, e_l]`` (edges included, as torch's clamp):
``d/d num = g / den`` and ``d/d den = -g * (q / den)``.

The torch path evaluates this in about fifteen passes over the tensors forward and ten backward; each
kernel here is one pass. Every float operation is the torch path's, in the same order and in the
arrays' dtype (no fast-math: no reassociation, no fused multiply-add), and a gradient that does not pass
is the same signed zero, so results are bit for bit those of the torch path (tested). The kernels run
on one thread: single passes, cheap beside the convolutions and matrix products torch runs around them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["window_times_bwd", "window_times_fwd"]


@njit(cache=True, nogil=True)
def window_times_fwd(
    w_sum: np.ndarray, wt_sum: np.ndarray, t_start: float, t_end: float, one: float, out: np.ndarray
) -> None:
    """``out[i]``: the spike time of ``w_sum[i]``, ``wt_sum[i]`` (flat contiguous arrays of one dtype;
    ``t_start``, ``t_end`` and ``one`` (1) given as scalars of that dtype)."""
    # Selects, not branches, so that the loop vectorises; a held neuron's quotient (over 1) is unused.
    for i in range(out.size):
        den = w_sum[i] + one
        num = wt_sum[i] + t_end
        pos = den > 0
        q = num / (den if pos else one)
        # torch.clamp: max with the lower edge, then min with the upper; NaN fails both tests and passes
        lo = t_start if q < t_start else q
        inside = t_end if lo > t_end else lo
        held = t_start if den * t_start - num >= 0 else t_end
        out[i] = inside if pos else held


@njit(cache=True, nogil=True)
def window_times_bwd(
    w_sum: np.ndarray,
    wt_sum: np.ndarray,
    grad: np.ndarray,
    t_start: float,
    t_end: float,
    one: float,
    grad_w_sum: np.ndarray,
    grad_wt_sum: np.ndarray,
) -> None:
    """Gradients of ``window_times_fwd``'s outputs with respect to ``w_sum`` and ``wt_sum`` given ``grad``
    (flat contiguous arrays of one dtype; scalars as for ``window_times_fwd``)."""
    zero = one - one
    for i in range(grad.size):  # (branches here: the same loop written with selects ran 9x slower)
        den = w_sum[i] + one
        if den > 0:
            q = (wt_sum[i] + t_end) / den
            g = grad[i] if (q >= t_start) and (q <= t_end) else zero
            grad_wt_sum[i] = g / den
            grad_w_sum[i] = -g * (q / den)
        else:
            grad_wt_sum[i] = zero
            grad_w_sum[i] = zero
