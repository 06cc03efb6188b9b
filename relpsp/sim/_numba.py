"""Optional compiled event loop for ``relpsp.sim.engine`` (numba); imported lazily, same results.

For each row (one image, or one receptive field of one image) the input events arrive in time order;
between events every neuron's potential grows linearly, ``V += S * (t_k - t_{k-1})``, and an event adds
its weight to the slope, ``S += w``. A neuron whose potential reaches theta inside an interval fires at
``t_{k-1} + (theta - V) / S`` and is done (one spike). A row stops early once every neuron has fired or
once an event lies beyond the cut-off (a later crossing would be dropped anyway).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["fire_rows_sorted"]


@njit(cache=True, parallel=True)
def fire_rows_sorted(t_sorted, order, n_ev, weight_t, theta, t_cut, out):  # pragma: no cover - compiled
    """``t_sorted``/``order`` ``[R, K]`` (ascending, inf after ``n_ev[r]``), ``weight_t [K_in, N]``;
    writes the exact (uncut) firing times into ``out [R, N]`` (pre-filled with inf)."""
    n_rows = t_sorted.shape[0]
    n_out = weight_t.shape[1]
    for r in prange(n_rows):
        v = np.zeros(n_out)
        s = np.zeros(n_out)
        done = np.zeros(n_out, dtype=np.bool_)
        n_done = 0
        t_prev = t_sorted[r, 0]
        stopped = False
        for k in range(n_ev[r]):
            t = t_sorted[r, k]
            dt = t - t_prev
            if dt > 0.0:
                for j in range(n_out):
                    if not done[j]:
                        v_new = v[j] + s[j] * dt
                        if v_new >= theta:
                            out[r, j] = t_prev + (theta - v[j]) / s[j]
                            done[j] = True
                            n_done += 1
                        else:
                            v[j] = v_new
            if n_done == n_out or t > t_cut:
                stopped = True
                break
            src = order[r, k]
            for j in range(n_out):
                s[j] += weight_t[src, j]
            t_prev = t
        if not stopped:
            for j in range(n_out):
                if not done[j] and s[j] > 0.0:
                    out[r, j] = t_prev + (theta - v[j]) / s[j]
