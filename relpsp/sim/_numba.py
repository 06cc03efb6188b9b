"""Optional compiled event loop for ``relpsp.sim.engine`` (numba); imported lazily, same results.

For each row (one image, or one receptive field of one image) the input events are put in time order;
between events every neuron's potential grows linearly, ``V += S * (t_k - t_{k-1})``, and an event adds
its weight to the slope, ``S += w``. A neuron whose potential reaches theta inside an interval fires at
``t_{k-1} + (theta - V) / S`` and is done (one spike). A row stops early once every neuron has fired or
once an event lies beyond the cut-off (a later crossing would be dropped anyway).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["fire_rows_unsorted"]


@njit(cache=True, parallel=True)
def fire_rows_unsorted(t_rows, weight_t, theta, t_cut, out):  # pragma: no cover - compiled
    """``t_rows [R, K]`` (inf = no spike), ``weight_t [K, N]``; writes the exact (uncut) firing times
    into ``out [R, N]`` (pre-filled with inf)."""
    n_rows, n_in = t_rows.shape
    n_out = weight_t.shape[1]
    for r in prange(n_rows):
        n_ev = 0
        for i in range(n_in):
            if t_rows[r, i] < np.inf:
                n_ev += 1
        if n_ev == 0:
            continue
        src_all = np.empty(n_ev, dtype=np.int64)
        t_all = np.empty(n_ev)
        n = 0
        for i in range(n_in):
            if t_rows[r, i] < np.inf:
                src_all[n] = i
                t_all[n] = t_rows[r, i]
                n += 1
        # Ties need no fixed order: equal times leave V unchanged in between.
        perm = np.argsort(t_all)
        v = np.zeros(n_out)
        s = np.zeros(n_out)
        done = np.zeros(n_out, dtype=np.bool_)
        n_done = 0
        t_prev = t_all[perm[0]]
        stopped = False
        for k in range(n_ev):
            t = t_all[perm[k]]
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
            src = src_all[perm[k]]
            for j in range(n_out):
                s[j] += weight_t[src, j]
            t_prev = t
        if not stopped:
            for j in range(n_out):
                if not done[j] and s[j] > 0.0:
                    out[r, j] = t_prev + (theta - v[j]) / s[j]
