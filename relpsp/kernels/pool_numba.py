"""Compiled CPU kernels of the earliest-spike pooling (``relpsp.functional.min_time_pool2d``); imported lazily.

``min_time_pool2d`` is ``-max_pool2d(-t)`` with no gradient to a window that has no spike. In torch that is
two negations of the whole input, a pooling that also writes its indices, a finiteness test and a
``where``, and as many passes back. These kernels pick each window's earliest spike in one pass (ties to
the first position in row-major order, as torch's max pooling) and route the gradient back in one more,
with the same float operations on the gradient as the torch path (the accumulation of overlapping
windows and the signs of its zeros included), so results are bit for bit the same (tested).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["min_pool_bwd", "min_pool_fwd"]


@njit(cache=True, nogil=True)
def min_pool_fwd(t: np.ndarray, kh: int, kw: int, sh: int, sw: int, out: np.ndarray, idx: np.ndarray) -> None:
    """``t [N, H, W]`` -> ``out [N, H_out, W_out]``, the earliest time of each window, and ``idx``, its flat
    position ``y * W + x`` in the plane (-1 when no input spiked: such a window passes no gradient)."""
    n, _, w = t.shape
    ho, wo = out.shape[1], out.shape[2]
    for p in range(n):
        for oy in range(ho):
            y0 = oy * sh
            for ox in range(wo):
                x0 = ox * sw
                best = t[p, y0, x0]
                at = y0 * w + x0
                for y in range(y0, y0 + kh):
                    for x in range(x0, x0 + kw):
                        if t[p, y, x] < best:
                            best = t[p, y, x]
                            at = y * w + x
                out[p, oy, ox] = best
                idx[p, oy, ox] = at if best < np.inf else -1


@njit(cache=True, nogil=True)
def min_pool_bwd(grad: np.ndarray, idx: np.ndarray, grad_in: np.ndarray) -> None:
    """``grad_in [N, H * W]`` (zeros on entry) gets each window's gradient at its winner; a window with no
    spike (``idx`` -1) passes none. As torch computes it through the two negations: the negated gradients
    are summed at each winner, then the whole plane is negated (torch adds a silent window's -0 at its
    first position, which changes no bit of a sum, so it is skipped here)."""
    n, ho, wo = grad.shape
    for p in range(n):
        for oy in range(ho):
            for ox in range(wo):
                if idx[p, oy, ox] >= 0:
                    grad_in[p, idx[p, oy, ox]] += -grad[p, oy, ox]
    for p in range(n):
        for i in range(grad_in.shape[1]):
            grad_in[p, i] = -grad_in[p, i]
