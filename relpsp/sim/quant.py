"""Fixed-point weights and a clocked time grid, as a digital accelerator would hold them.

Weights (``weight_bits = B``): symmetric per-layer fixed point. With ``scale = max|w| / (2^(B-1) - 1)``
each weight becomes ``round(w / scale) * scale``, an integer code in ``[-(2^(B-1) - 1), 2^(B-1) - 1]``
(a layer of all-zero weights is left as is). The threshold stays in weight units (a chip compares the
integer potential with ``theta / scale``).

Time (``time_bits = b``): one global clock for the whole network, ticks ``n = 0, 1, ..., 2^b`` of
length ``dt = T / 2^b`` over the window ``[0, T]``. Every spike time, input spikes included, is rounded
**up** to the next tick, ``n = ceil(t / dt)``; a spike whose tick would exceed ``2^b`` (later than T)
is dropped. Rounding up is what a clocked neuron does: with inputs on ticks the potential

    V[n] = sum_i w_i * max(0, n - n_i) * dt,   V[n + 1] = V[n] + S[n] * dt,   S[n] = sum_{n_i <= n} w_i

is linear between ticks, so the first tick with ``V[n] >= theta`` is exactly ``ceil(t* / dt)`` of the
exact crossing time ``t*`` computed from the (already quantised) inputs. To absorb float rounding a
time within ``1e-9`` ticks above a tick counts as on it.

The window T (see ``resolve_time_window``): an explicit ``time_window``; else the global cut-off
``t_cutoff`` when finite; else, when every spiking layer has a finite ``t_max``, ``max(t_in, t_max)``;
otherwise there is no natural window and the caller must give one. ``calibrate_time_window`` measures
one on calibration images, which ``relpsp simulate`` and ``relpsp cost`` use and report: by default
(rule ``"decision"``) the latest decision time of an unquantised run, widened until the time grid keeps
every decision; with rule ``"spikes"`` the 99.9th percentile of all spike times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TICK_TOLERANCE", "TimeGrid", "quantize_weight"]

#: Fraction of a tick by which a time may exceed a grid point and still count as on it (float rounding).
TICK_TOLERANCE = 1e-9


def quantize_weight(weight: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
    """Symmetric per-layer fixed point with ``bits`` bits (sign included). Returns ``(w_q, scale)``;
    ``w_q = round(w / scale) * scale`` in float64. ``bits`` must be in [2, 64]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 64:
        raise ValueError(f"weight_bits must be an integer in [2, 64], got {bits!r}")
    w = np.asarray(weight, dtype=np.float64)
    if not np.isfinite(w).all():
        raise ValueError("weights to quantise must be finite")
    w_abs_max = float(np.abs(w).max()) if w.size else 0.0
    if w_abs_max == 0.0:
        return w.copy(), 1.0
    levels = 2 ** (int(bits) - 1) - 1
    scale = w_abs_max / levels
    return np.clip(np.round(w / scale), -levels, levels) * scale, scale


@dataclass(frozen=True)
class TimeGrid:
    """Ticks ``0 .. 2^bits`` of ``dt = window / 2^bits`` over ``[0, window]``."""

    window: float
    bits: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window) and self.window > 0):
            raise ValueError(f"time window must be a finite positive number, got {self.window!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or not 1 <= self.bits <= 48:
            raise ValueError(f"time_bits must be an integer in [1, 48], got {self.bits!r}")
        object.__setattr__(self, "window", float(self.window))
        object.__setattr__(self, "bits", int(self.bits))

    @property
    def n_ticks(self) -> int:
        """Number of steps ``2^bits`` (the last tick index)."""
        return 1 << self.bits

    @property
    def dt(self) -> float:
        return self.window / self.n_ticks

    def ticks(self, t: np.ndarray) -> np.ndarray:
        """Tick index ``ceil(t / dt)`` (float64; inf stays inf; beyond ``n_ticks`` becomes inf)."""
        t = np.asarray(t, dtype=np.float64)
        if np.isnan(t).any():
            raise ValueError("spike times to put on the grid must not be NaN")
        n = np.ceil(t / self.dt - TICK_TOLERANCE)
        n = np.maximum(n, 0.0)
        return np.where(n <= self.n_ticks, n, np.inf)

    def quantize(self, t: np.ndarray) -> np.ndarray:
        """Spike times rounded up to the grid; spikes later than the window are dropped (inf)."""
        return self.ticks(t) * self.dt
