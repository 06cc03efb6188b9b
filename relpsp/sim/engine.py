"""Event-driven float64 simulation of ReL-PSP networks, independent of the training code.

Model (Zhang et al., IEEE TNNLS 2021, arXiv:2003.11837): neuron j of a spiking layer has

    V_j(t) = sum_i w_ji * max(0, t - t_i)

and fires once, at the first t with V_j(t) >= theta; a spike later than the cut-off is dropped.

How it runs. Layer by layer; for every neuron the input events (spikes of the previous layer that reach
it) are taken in time order, t_(1) <= t_(2) <= ... Between two events the potential is linear with slope
S = the summed weights of the inputs seen so far, so

    V(t_(k)) = V(t_(k-1)) + S_(k-1) * (t_(k) - t_(k-1)),     S_(k) = S_(k-1) + w_(k),

and a neuron whose potential reaches theta inside [t_(k-1), t_(k)] fires at
t_(k-1) + (theta - V(t_(k-1))) / S_(k-1); after the last event it fires if S > 0. Only the first crossing
counts (negative weights can make V fall and cross again later). This is the discrete-time description
of model.md section 5 in continuous time; with a time grid (``time_bits``) every spike is rounded up to
the next tick, which is exactly when a clocked IF neuron (``V[n+1] = V[n] + S[n]``) first sees V >= theta
(see ``relpsp.sim.quant``).

Vectorisation: a *row* is one set of neurons that share their input events: one image for a dense layer,
one (image, output position) receptive field for a convolution (padded positions never spike). Rows are
sorted once; the plain-NumPy path walks the sorted events of a block of rows in chunks, carrying
``(V, S, t_prev)`` from chunk to chunk, and drops rows whose neurons have all fired, whose events are
exhausted, or whose next event lies beyond the cut-off. The optional numba path (``backend="numba"``,
lazy import) runs the same loop per row with an early exit; both give the same spike times up to
float64 rounding.

Windowed networks (``net.window``; ``relpsp.sim.network``): all inputs of spiking layer l have arrived
by its window's start s, so in the window the potential V(t) = V(s) + W (t - s) is linear (W the summed
weights of the inputs that spiked, V(s) accumulated from the input events), and so is V(t) - (e - t).
The neuron fires at s if V(s) >= e - s, else at the crossing s + (e - s - V(s)) / (1 + W) if it comes
by e, else at e. On a time grid both edges are rounded up to ticks; the neuron is checked at the ticks
n_s .. n_e of its window against the exact threshold e - n dt, fires at the first tick that meets it
and otherwise at n_e (``window_fire_rows``). Their frame is fixed, ``[0, t_in + L T]``; a cut-off or
another time window does not apply.

Timing noise (``jitter`` σ > 0): every spike, the input's and each spiking layer's, is moved by an
independent Gaussian N(0, σ²) draw after the layer has computed it exactly from its (already moved)
inputs, and clamped at t = 0; pooling and flattening pass the moved times on. Whether a neuron fires is
decided before the move, so a moved spike may land past a cut-off. Image n's draws come from a
generator seeded with ``(jitter_seed, n)`` (n counted over the whole call, or from ``first_image``), so
the result does not depend on the batch size. Refused with a time grid (the other model of timing error)
and for windowed networks (a moved input could miss its window).

Counts for the cost model (per image, per layer; ``relpsp.hw``): spikes arriving at the layer, spikes it
emits, synaptic events (each arriving spike times its fan-out: ``N_out`` for a dense layer,
``C_out`` times the number of output positions whose receptive field holds the spike for a convolution)
and, on a time grid, clocked neuron updates: a neuron is updated once per tick from the tick of its
first input event until it fires (or until the cut-off or the end of the window if it never does).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from relpsp.sim.network import SimConv, SimDense, SimFlatten, SimNetwork, SimPool
from relpsp.sim.quant import TICK_TOLERANCE, TimeGrid, quantize_weight

__all__ = [
    "BACKENDS",
    "SimOptions",
    "SimResult",
    "as_network_images",
    "backend_that_runs",
    "calibrate_time_window",
    "concat_results",
    "conv_reach",
    "fire_rows",
    "latency_encode_np",
    "resolve_backend",
    "resolve_time_window",
    "run_layer",
    "simulate",
    "window_fire_rows",
]

BACKENDS = ("auto", "numpy", "numba")

# Elements of one [rows, events, neurons] block in the NumPy path (float64: 16 MB).
_BLOCK_ELEMS = 1 << 21
_CHUNK_EVENTS = 32


@dataclass(frozen=True)
class SimOptions:
    """How to run: ``weight_bits`` (None = float64 weights), ``time_bits`` (None = continuous time),
    ``t_cutoff`` (a global cut-off on every spike, input included, on top of each layer's ``t_max``),
    ``time_window`` (T of the time grid; None = derived, see ``resolve_time_window``), ``backend``
    (``"auto"``: numba when installed, else ``"numpy"``), ``batch_size`` (images per step), ``jitter``
    (σ of the Gaussian timing noise on every spike, in the network's time unit; 0 = none; see the module
    docstring) and ``jitter_seed``."""

    weight_bits: int | None = None
    time_bits: int | None = None
    t_cutoff: float = math.inf
    time_window: float | None = None
    backend: str = "auto"
    batch_size: int = 256
    jitter: float = 0.0
    jitter_seed: int = 0

    def __post_init__(self) -> None:
        if self.weight_bits is not None:
            quantize_weight(np.zeros(1), self.weight_bits)  # validates
        if self.time_bits is not None:
            TimeGrid(1.0, self.time_bits)  # validates
        if math.isnan(self.t_cutoff) or self.t_cutoff <= 0:
            raise ValueError(f"t_cutoff must be > 0 (or inf for none), got {self.t_cutoff!r}")
        if self.time_window is not None and not (math.isfinite(self.time_window) and self.time_window > 0):
            raise ValueError(f"time_window must be a finite positive number, got {self.time_window!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)):
            raise ValueError(f"jitter must be a number, got {self.jitter!r}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise ValueError(f"jitter must be a finite number >= 0, got {self.jitter!r}")
        if isinstance(self.jitter_seed, bool) or not isinstance(self.jitter_seed, int) or self.jitter_seed < 0:
            raise ValueError(f"jitter_seed must be an integer >= 0, got {self.jitter_seed!r}")
        if self.jitter > 0 and self.time_bits is not None:
            raise ValueError("jitter and time_bits are two models of timing error: use one of them")


@dataclass
class SimResult:
    """Per-image results of ``simulate`` (B images, L layers plus the input at index 0).

    ``t_out [B, K]`` output spike times; ``decision [B]`` the class of the earliest output spike (ties to
    the lowest index; -1 = no output spike); ``t_decision [B]`` its time (inf = none). Counts ``[B, L+1]``
    (int64), columns named by ``layer_names``: ``spikes_in``, ``spikes_out``, ``syn_events``,
    ``neuron_updates`` (None without a time grid). ``t_last [B]``: the latest finite spike time of any
    layer (0 if none). ``layer_times``: spike times after every layer when ``record_layers``.
    """

    t_out: np.ndarray
    decision: np.ndarray
    t_decision: np.ndarray
    layer_names: tuple[str, ...]
    n_neurons: tuple[int, ...]
    spikes_in: np.ndarray
    spikes_out: np.ndarray
    syn_events: np.ndarray
    neuron_updates: np.ndarray | None
    t_last: np.ndarray
    options: SimOptions
    grid: TimeGrid | None = None
    layer_times: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_images(self) -> int:
        return int(self.t_out.shape[0])

    def accuracy(self, labels: Any) -> float:
        """Fraction of images whose decision equals the label (no decision counts as wrong)."""
        y = np.asarray(labels).reshape(-1)
        if y.shape[0] != self.n_images:
            raise ValueError(f"labels has {y.shape[0]} entries for {self.n_images} images")
        return float(((self.decision >= 0) & (self.decision == y)).mean()) if self.n_images else math.nan

    def no_decision_rate(self) -> float:
        return float((self.decision < 0).mean()) if self.n_images else math.nan

    def tied_decision_rate(self) -> float:
        """Fraction of images whose earliest output time is shared by two or more outputs (the decision
        then goes to the lowest class index); coarse time grids make these common."""
        if not self.n_images:
            return math.nan
        first = self.t_out.min(axis=1, keepdims=True)
        tied = (self.t_out == first).sum(axis=1) > 1
        return float((tied & np.isfinite(first[:, 0])).mean())


def latency_encode_np(x: np.ndarray, t_in: float, zero_fires: bool) -> np.ndarray:
    """Intensities in [0, 1] -> spike times ``t_in * (1 - x)``; ``x = 0`` never fires unless ``zero_fires``."""
    x = np.asarray(x, dtype=np.float64)
    if not (math.isfinite(t_in) and t_in > 0):
        raise ValueError(f"t_in must be a finite positive number, got {t_in!r}")
    if x.size and not ((x >= 0) & (x <= 1)).all():  # NaN fails both comparisons
        raise ValueError("intensities must lie in [0, 1] (and not be NaN)")
    t = t_in * (1.0 - x)
    if not zero_fires:
        t = np.where(x > 0, t, np.inf)
    return t


def resolve_backend(backend: str) -> str:
    """The backend ``backend`` names: ``"auto"`` is numba where it is installed, else numpy."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_numba = importlib.util.find_spec("numba") is not None
    if backend == "auto":
        return "numba" if has_numba else "numpy"
    if backend == "numba" and not has_numba:
        raise RuntimeError("the 'numba' simulator backend needs numba: pip install numba (or use backend='numpy')")
    return backend


def backend_that_runs(net: SimNetwork, options: SimOptions) -> str:
    """The backend ``simulate(net, x, options)`` runs, for reports (never ``auto``): ``options.backend``
    resolved (and checked) as ``resolve_backend`` does, except that windowed layers are NumPy matrix
    products whatever it says."""
    backend = resolve_backend(options.backend)
    return "numpy" if net.window is not None else backend


def _sort_rows(t_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows with at least one event, their events in time order: ``(rows, t_sorted, order, n_ev)``."""
    n_ev_all = np.isfinite(t_rows).sum(1)
    rows = np.flatnonzero(n_ev_all)
    sub = t_rows[rows]
    order = np.argsort(sub, axis=1, kind="stable")
    n_max = int(n_ev_all.max()) if rows.size else 0
    order = np.ascontiguousarray(order[:, :n_max])
    t_sorted = np.ascontiguousarray(np.take_along_axis(sub, order, 1))
    return rows, t_sorted, order, n_ev_all[rows]


def _cumsum0(a: np.ndarray) -> None:
    """In-place cumulative sum over axis 0, one contiguous slab at a time (much faster than
    ``np.cumsum(axis=0)``, which walks the long stride in its inner loop)."""
    for i in range(1, a.shape[0]):
        a[i] += a[i - 1]


def _fire_sorted_numpy(
    t_sorted: np.ndarray, order: np.ndarray, n_ev: np.ndarray, weight_t: np.ndarray, theta: float, t_cut: float
) -> np.ndarray:
    """Exact (uncut) firing times ``[R, N]`` of rows whose events are sorted; see the module docstring."""
    n_rows, n_max = t_sorted.shape
    n_out = weight_t.shape[1]
    zero_row = weight_t.shape[0]
    weight_z = np.concatenate([weight_t, np.zeros((1, n_out))], axis=0)
    result = np.full((n_rows, n_out), np.inf)
    # Longest rows first, so that a block holds rows of similar length and little padding.
    by_len = np.argsort(-n_ev, kind="stable")
    chunk = max(1, min(n_max, _CHUNK_EVENTS))
    block = max(1, _BLOCK_ELEMS // (chunk * max(n_out, 1)))
    for b0 in range(0, n_rows, block):
        idx = by_len[b0 : b0 + block]
        ts, od, ne = t_sorted[idx], order[idx], n_ev[idx]
        nb = int(ne.max())
        v = np.zeros((idx.size, n_out))
        s = np.zeros((idx.size, n_out))
        t_prev = ts[:, 0].copy()
        t_fire = np.full((idx.size, n_out), np.inf)
        done = np.zeros((idx.size, n_out), dtype=bool)
        live = np.arange(idx.size)
        k0 = 0
        while live.size:
            if k0 < nb:
                keep = (ne[live] > k0) & (ts[live, k0] <= t_cut) & ~done[live].all(1)
            else:
                keep = np.zeros(live.size, dtype=bool)
            gone = live[~keep]
            if gone.size:
                # After the last processed event: fire if the slope is positive and the crossing comes
                # before the next (unprocessed) event, if any.
                t_next = ts[gone, k0] if k0 < nb else np.full(gone.size, np.inf)
                sg, vg = s[gone], v[gone]
                with np.errstate(divide="ignore", invalid="ignore"):
                    cand = t_prev[gone, None] + (theta - vg) / sg
                ok = ~done[gone] & (sg > 0) & (cand <= t_next[:, None])
                t_fire[gone] = np.where(ok, cand, t_fire[gone])
                done[gone] |= ok
            live = live[keep]
            if live.size == 0:
                break
            k1 = min(k0 + chunk, nb)
            k_start, k0 = k0, k1
            # Event axis first ([c, l, N]): the running sums then go over contiguous slabs.
            t_ev = ts[live, k_start:k1].T  # [c, l]
            valid = np.isfinite(t_ev)
            t_before = np.concatenate([t_prev[None, live], t_ev[:-1]], axis=0)
            with np.errstate(invalid="ignore"):
                d_t = np.where(valid, t_ev - t_before, 0.0)
            # Padding (no event) reads the all-zero last row of weight_z.
            s_after = weight_z[np.where(valid, od[live, k_start:k1].T, zero_row)]  # [c, l, N]
            s_l, v_l = s[live], v[live]
            # s_after[i]: slope after event i; the interval that ends at event i has slope s_after[i - 1]
            # (s_l for i = 0), and v_at[i] is the potential at event i.
            s_after[0] += s_l
            _cumsum0(s_after)
            v_at = np.empty_like(s_after)
            np.multiply(s_l, d_t[0][:, None], out=v_at[0])
            v_at[0] += v_l
            for i in range(1, v_at.shape[0]):
                np.multiply(s_after[i - 1], d_t[i][:, None], out=v_at[i])
                v_at[i] += v_at[i - 1]
            hit = v_at.max(0) >= theta
            hit &= ~done[live]
            if hit.any():
                li, nj = np.nonzero(hit)
                col = v_at[:, li, nj]  # [c, n_hit]
                first = (col >= theta).argmax(0)  # the first crossing in this chunk
                prev = np.maximum(first - 1, 0)
                v_prev = np.where(first > 0, col[prev, np.arange(li.size)], v_l[li, nj])
                s_int = np.where(first > 0, s_after[prev, li, nj], s_l[li, nj])
                t_fire[live[li], nj] = t_before[first, li] + (theta - v_prev) / s_int
                done[live[li], nj] = True
            v[live] = v_at[-1]
            s[live] = s_after[-1]
            t_prev[live] = np.where(valid, t_ev, -np.inf).max(0)
        result[idx] = t_fire
    return result


def _check_times(name: str, t: np.ndarray) -> None:
    """Spike times are real numbers or +inf (no spike); NaN and -inf have no meaning (and the two backends
    would treat them differently)."""
    if np.isnan(t).any() or np.isneginf(t).any():
        raise ValueError(f"{name} must hold spike times or +inf (no spike); it holds NaN or -inf")


def _checked_rows(t_rows: Any, weight: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(t_rows [R, K], weight [N, K])`` as float64, checked: matching shapes, spike times or +inf,
    finite weights."""
    t_rows = np.asarray(t_rows, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if t_rows.ndim != 2 or weight.ndim != 2 or weight.shape[1] != t_rows.shape[1]:
        raise ValueError(f"t_rows [R, K] and weight [N, K] do not match: {t_rows.shape} and {weight.shape}")
    _check_times("t_rows", t_rows)
    if not np.isfinite(weight).all():
        raise ValueError("weight must be finite")
    return t_rows, weight


def fire_rows(
    t_rows: np.ndarray, weight: np.ndarray, theta: float, t_cut: float = math.inf, backend: str = "auto"
) -> np.ndarray:
    """ReL-PSP neurons on rows of shared inputs: ``t_rows [R, K]`` (inf = no spike), ``weight [N, K]``
    -> first spike times ``[R, N]`` (float64), spikes later than ``t_cut`` dropped."""
    t_rows, weight = _checked_rows(t_rows, weight)
    if not (math.isfinite(theta) and theta > 0):
        raise ValueError(f"theta must be a finite positive number, got {theta!r}")
    if not t_cut > 0:  # NaN fails too
        raise ValueError(f"t_cut must be positive (inf = no cut-off), got {t_cut!r}")
    return _fire_rows(t_rows, weight, theta, t_cut, backend)


def _fire_rows(t_rows: np.ndarray, weight: np.ndarray, theta: float, t_cut: float, backend: str) -> np.ndarray:
    """``fire_rows`` on float64 arrays already checked: the engine's own calls, whose spike times it made
    itself and whose weights the network validated, skip the checks of the public function."""
    out = np.full((t_rows.shape[0], weight.shape[0]), np.inf)
    if t_rows.size == 0 or weight.shape[0] == 0:
        return out
    weight_t = np.ascontiguousarray(weight.T)
    if resolve_backend(backend) == "numba":
        from relpsp.sim._numba import fire_rows_unsorted

        fire_rows_unsorted(np.ascontiguousarray(t_rows), weight_t, float(theta), float(t_cut), out)
        return np.where(out <= t_cut, out, np.inf)
    rows, t_sorted, order, n_ev = _sort_rows(t_rows)
    if rows.size:
        sub = _fire_sorted_numpy(t_sorted, order, n_ev, weight_t, float(theta), float(t_cut))
        out[rows] = np.where(sub <= t_cut, sub, np.inf)
    return out


def window_fire_rows(t_rows: np.ndarray, weight: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    """Windowed neurons on rows of shared inputs (see the module docstring): ``t_rows [R, K]`` (inf = no
    spike; every spike at or before ``t_start``), ``weight [N, K]`` -> spike times ``[R, N]`` in
    ``[t_start, t_end]``, every neuron firing once."""
    t_rows, weight = _checked_rows(t_rows, weight)
    if not (math.isfinite(t_start) and math.isfinite(t_end) and t_end > t_start):
        raise ValueError(f"the window must be finite with t_end > t_start, got [{t_start}, {t_end}]")
    latest = float(np.where(np.isfinite(t_rows), t_rows, -np.inf).max()) if t_rows.size else -math.inf
    # Slack for times from a float32 model, whose window edge may lie an ulp above the float64 one
    # (``relpsp.window`` allows the same).
    if latest > t_start + 1e-6 * max(1.0, abs(t_start)):
        raise ValueError(f"an input spike at t = {latest:.6g} comes after the window's start {t_start:.6g}")
    return _window_fire(t_rows, weight, t_start, t_end)


def _window_fire(t_rows: np.ndarray, weight: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    """``window_fire_rows`` on arrays already checked (the engine's own calls)."""
    spiked = np.isfinite(t_rows)
    w_t = weight.T
    slope = spiked.astype(np.float64) @ w_t  # W: the summed weights of the inputs that spiked
    v_start = np.where(spiked, t_start - t_rows, 0.0) @ w_t  # V(s): each input has integrated for s - t_i
    short = (t_end - t_start) - v_start  # how far V(s) is below the threshold e - s
    rise = 1.0 + slope  # d/dt of V(t) - (e - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = t_start + short / rise
    return np.where(short <= 0, t_start, np.where(rise > 0, np.minimum(cross, t_end), t_end))


def _conv_rows(t: np.ndarray, kernel: int, stride: int, padding: int) -> tuple[np.ndarray, int, int]:
    """``[B, C, H, W]`` -> receptive fields ``[B * H_out * W_out, C * k * k]`` (padding never spikes)."""
    if padding:
        t = np.pad(t, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=np.inf)
    win = sliding_window_view(t, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    b, c, h_out, w_out = win.shape[:4]
    rows = win.transpose(0, 2, 3, 1, 4, 5).reshape(b * h_out * w_out, c * kernel * kernel)
    return rows, h_out, w_out


def conv_reach(in_hw: tuple[int, int], kernel: int, stride: int, padding: int) -> np.ndarray:
    """``[H, W]``: how many output positions of the convolution see each input position."""
    counts = []
    for n in in_hw:
        if n + 2 * padding < kernel:
            raise ValueError(f"a {kernel}x{kernel} kernel does not fit a {tuple(in_hw)} input padded by {padding}")
        n_out = (n + 2 * padding - kernel) // stride + 1
        starts = np.arange(n_out) * stride - padding
        pos = np.arange(n)[:, None]
        counts.append(((pos >= starts) & (pos < starts + kernel)).sum(1))
    return np.outer(counts[0], counts[1]).astype(np.int64)


def _pool(t: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    win = sliding_window_view(t, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return win.min(axis=(4, 5))


def _check_window_options(net: SimNetwork, options: SimOptions) -> None:
    """A windowed network's frame is fixed by its windows: refuse options that would move it."""
    if net.window is not None and (options.time_window is not None or math.isfinite(options.t_cutoff)):
        raise ValueError(
            f"a windowed network fires every neuron by the end of its last window (t = {net.frame_end:g}), which"
            " is also its time window: t_cutoff and time_window do not apply"
        )
    if net.window is not None and options.jitter > 0:
        raise ValueError("jitter is not supported for a windowed network (a moved input could miss its window)")


def resolve_time_window(net: SimNetwork, options: SimOptions) -> float | None:
    """T of the time grid: for a windowed network the end of its last window; else ``time_window``; else
    a finite ``t_cutoff``; else ``max(t_in, t_max)`` when every spiking layer has a finite ``t_max``; else
    None (the caller must calibrate or give one)."""
    _check_window_options(net, options)
    if net.frame_end is not None:
        return net.frame_end
    if options.time_window is not None:
        return float(options.time_window)
    if math.isfinite(options.t_cutoff):
        return float(options.t_cutoff)
    t_maxes = [layer.t_max for layer in net.layers if isinstance(layer, (SimDense, SimConv))]
    if all(math.isfinite(t) for t in t_maxes):
        return float(max([net.t_in, *t_maxes]))
    return None


def as_network_images(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x [B, ...]`` as ``[B, *shape]``. Reshaped (row-major) only where the layout is unambiguous: flat
    rows ``[B, prod(shape)]``, images into a flat network (``shape`` of one dimension), and ``[B, H, W]``
    for a single-channel ``(1, H, W)`` network. Any other mismatch is refused: a channel-last
    ``[B, H, W, C]`` array has the right size but would be read scrambled."""
    got = tuple(x.shape[1:])
    if got == tuple(shape):
        return x
    size_ok = math.prod(got) == math.prod(shape)
    flat = x.ndim == 2 or len(shape) == 1
    no_channel = len(shape) == 3 and shape[0] == 1 and got == tuple(shape[1:])
    if not (size_ok and (flat or no_channel)):
        raise ValueError(
            f"x has images of shape {got}, the network needs {tuple(shape)} (channels first), "
            f"or flat rows of {math.prod(shape)} values"
        )
    return x.reshape((x.shape[0], *shape))


def _check_inputs(net: SimNetwork, x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("x must be a batch of images [B, ...], got a scalar")
    x = as_network_images(x, net.input_shape)
    if x.size and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("x must hold intensities in [0, 1] (no NaN); normalise the data first")
    return x


def _effective_weights(net: SimNetwork, weight_bits: int | None) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for layer in net.layers:
        if isinstance(layer, (SimDense, SimConv)):
            w = layer.weight if weight_bits is None else quantize_weight(layer.weight, weight_bits)[0]
            out.append(w)
        else:
            out.append(None)
    return out


def _fire_layer(
    layer: SimDense | SimConv, w: np.ndarray, t: np.ndarray, fire: Any
) -> tuple[np.ndarray, np.ndarray, Any]:
    """One spiking layer on input times ``t`` -> ``(rows, t_rows, to_layer)``: the rows of shared input
    events, their output times ``[R, N]`` (``fire(rows, weight [N, K])``) and a function that lays rows
    out as the layer's output."""
    if isinstance(layer, SimDense):
        return t, fire(t, w), lambda r: r
    b, c_out = t.shape[0], w.shape[0]
    rows, h_out, w_out = _conv_rows(t, layer.kernel, layer.stride, layer.padding)
    t_rows = fire(rows, w.reshape(c_out, -1))
    return rows, t_rows, lambda r: r.reshape(b, h_out, w_out, c_out).transpose(0, 3, 1, 2)


def _window_ticks(s: float, e: float, grid: TimeGrid) -> tuple[float, float]:
    """``(n_s, n_e)``: the ticks of the window edges ``s`` and ``e`` (rounded up); refused if the grid gives
    the window less than one tick."""
    n_s, n_e = (float(grid.ticks(np.array(x))) for x in (s, e))
    if not n_e > n_s:
        raise ValueError(
            f"a {grid.bits}-bit grid over [0, {grid.window:g}] gives the windows of length {e - s:g} less than"
            " one tick each; use more time_bits"
        )
    return n_s, n_e


def run_layer(net: SimNetwork, index: int, t: Any, options: SimOptions | None = None) -> np.ndarray:
    """Layer ``index`` of ``net`` (0-based, as ``net.layers``) alone on given input spike times ``t``
    ``[B, *in_shape]`` (inf = no spike) -> its output times in float64: the same computation as one step
    of ``simulate`` without a time grid (weights rounded to ``options.weight_bits`` if set). Lets a check
    feed every layer the *same* input spikes as another implementation, so that a difference in one
    layer is not confused with one carried in from the layers before."""
    options = options or SimOptions()
    if not 0 <= index < len(net.layers):
        raise ValueError(f"layer index {index} out of range for a network of {len(net.layers)} layers")
    if options.time_bits is not None:
        raise ValueError("run_layer runs without a time grid; time_bits must be None")
    if options.jitter > 0:
        raise ValueError("run_layer runs without timing noise; jitter must be 0")
    layer = net.layers[index]
    t = np.asarray(t, dtype=np.float64)
    _check_times("t", t)
    in_shape = net.shapes[index]
    if t.ndim < 1 or tuple(t.shape[1:]) != tuple(in_shape):
        raise ValueError(f"layer {index} takes spike times [B, {', '.join(map(str, in_shape))}], got {t.shape}")
    if isinstance(layer, SimFlatten):
        return t.reshape(t.shape[0], -1)
    if isinstance(layer, SimPool):
        return _pool(t, layer.kernel, layer.step)
    w = _effective_weights(net, options.weight_bits)[index]
    assert w is not None
    if net.window is not None:
        _check_window_options(net, options)
        s, e = net.layer_window(index)
        fire = partial(window_fire_rows, t_start=s, t_end=e)  # the public one: checks the inputs come by s
    else:
        fire = partial(
            _fire_rows,
            theta=layer.theta,
            t_cut=min(layer.t_max, options.t_cutoff),
            backend=resolve_backend(options.backend),
        )
    _, t_rows, to_layer = _fire_layer(layer, w, t, fire)
    return to_layer(t_rows)


def _run_batch(
    net: SimNetwork,
    x: np.ndarray,
    weights: list[np.ndarray | None],
    options: SimOptions,
    grid: TimeGrid | None,
    backend: str,
    record_layers: bool,
    first_image: int = 0,
) -> dict[str, Any]:
    b = x.shape[0]
    rngs = (
        [np.random.default_rng([options.jitter_seed, first_image + k]) for k in range(b)]
        if options.jitter > 0
        else None
    )
    n_cols = len(net.layers) + 1
    spikes_in = np.zeros((b, n_cols), dtype=np.int64)
    spikes_out = np.zeros((b, n_cols), dtype=np.int64)
    syn = np.zeros((b, n_cols), dtype=np.int64)
    upd = np.zeros((b, n_cols), dtype=np.int64) if grid is not None else None
    t = latency_encode_np(x, net.t_in, net.zero_fires)
    cut_in = options.t_cutoff
    if grid is not None:
        t = grid.quantize(t)
        cut_in = min(cut_in, grid.window)
    t = np.where(t <= cut_in * (1 + 1e-12), t, np.inf)
    if rngs is not None:
        t = _jittered(t, rngs, options.jitter)
    spikes_out[:, 0] = _per_image(np.isfinite(t)).sum(1)
    t_last = _per_image(np.where(np.isfinite(t), t, 0.0)).max(1) if t.size else np.zeros(b)
    times = [t] if record_layers else None
    for i, layer in enumerate(net.layers, start=1):
        fired_in = np.isfinite(t)
        spikes_in[:, i] = _per_image(fired_in).sum(1)
        if isinstance(layer, SimFlatten):
            t = _per_image(t)
        elif isinstance(layer, SimPool):
            t = _pool(t, layer.kernel, layer.step)
        else:
            w = weights[i - 1]
            assert w is not None
            if isinstance(layer, SimDense):
                syn[:, i] = spikes_in[:, i] * w.shape[0]
            else:
                reach = conv_reach(t.shape[2:], layer.kernel, layer.stride, layer.padding)
                syn[:, i] = _per_image(fired_in * reach).sum(1) * w.shape[0]
            if net.window is not None:
                s, e = net.layer_window(i - 1)
                if grid is not None:
                    # checked from the window's first tick on, against the exact threshold e - n dt (the
                    # inputs are on ticks at or before it)
                    start_tick, end_tick = _window_ticks(s, e, grid)
                    s = start_tick * grid.dt
                rows, t_rows, to_layer = _fire_layer(layer, w, t, partial(_window_fire, t_start=s, t_end=e))
                if grid is not None:
                    t_rows = np.clip(grid.ticks(t_rows), start_tick, end_tick) * grid.dt
            else:
                t_cut = min(layer.t_max, options.t_cutoff)
                fire_cut = t_cut
                if grid is not None:
                    t_cut = min(t_cut, grid.window)
                    # the last tick the cut-off allows; a crossing that float rounding puts a hair past it
                    # (within TICK_TOLERANCE of a tick) still lands on it, so it is kept through the exact
                    # search too
                    end_tick = float(min(grid.n_ticks, math.floor(t_cut / grid.dt + TICK_TOLERANCE)))
                    fire_cut = (end_tick + TICK_TOLERANCE) * grid.dt
                rows, t_rows, to_layer = _fire_layer(
                    layer, w, t, partial(_fire_rows, theta=layer.theta, t_cut=fire_cut, backend=backend)
                )
                if grid is not None:
                    fired_tick = grid.ticks(t_rows)
                    t_rows = np.where(fired_tick <= end_tick, fired_tick * grid.dt, np.inf)
            t_new = to_layer(t_rows)
            if grid is not None:
                assert upd is not None
                # Clocked updates: from the tick of the first input event to the firing tick (or to the
                # last tick the cut-off allows, for a neuron that never fires).
                first_tick = grid.ticks(rows.min(1)) if rows.shape[1] else np.full(rows.shape[0], np.inf)
                fire_tick = np.minimum(grid.ticks(t_rows), end_tick)
                has_input = np.isfinite(first_tick)
                span = np.where(
                    has_input[:, None], np.maximum(fire_tick - np.where(has_input, first_tick, 0)[:, None], 0), 0
                )
                # The rows are image-major: each image's rows are consecutive. Every span is a whole number
                # of ticks below 2^49, exact in float64 and int64; the sums are taken in int64 (exact) once
                # a float sum shows they stay well inside its range (else the count would wrap).
                per_image = span.reshape(b, span.size // max(b, 1))
                if per_image.size and float(per_image.sum(1).max()) >= 2.0**62:
                    raise ValueError(
                        f"layer {i + 1}'s clocked neuron updates could exceed a 64-bit count on a "
                        f"{grid.bits}-bit grid; use fewer time_bits"
                    )
                upd[:, i] = per_image.astype(np.int64).sum(1)
            t = t_new if rngs is None else _jittered(t_new, rngs, options.jitter)
        spikes_out[:, i] = _per_image(np.isfinite(t)).sum(1)
        if t.size:
            t_last = np.maximum(t_last, _per_image(np.where(np.isfinite(t), t, 0.0)).max(1))
        if times is not None:
            times.append(t)
    return {
        "t_out": t,
        "spikes_in": spikes_in,
        "spikes_out": spikes_out,
        "syn_events": syn,
        "neuron_updates": upd,
        "t_last": t_last,
        "layer_times": times,
    }


def _jittered(t: np.ndarray, rngs: list[np.random.Generator], sigma: float) -> np.ndarray:
    """``t [B, ...]`` with every finite time moved by its own N(0, sigma^2) draw (image k's from
    ``rngs[k]``, in the layer order) and clamped at 0; no spike appears or disappears."""
    flat = _per_image(t)
    noise = np.stack([rng.standard_normal(flat.shape[1]) for rng in rngs]) if len(rngs) else np.zeros(flat.shape)
    moved = np.maximum(flat + sigma * noise, 0.0)
    return np.where(np.isfinite(flat), moved, np.inf).reshape(t.shape)


def _per_image(a: np.ndarray) -> np.ndarray:
    """``a [B, ...]`` as ``[B, rest]``; unlike ``reshape(B, -1)`` also for B = 0."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def simulate(
    net: SimNetwork, x: Any, options: SimOptions | None = None, *, record_layers: bool = False, first_image: int = 0
) -> SimResult:
    """Run intensities ``x [B, *net.input_shape]`` (values in [0, 1]; flat rows, images into a flat network
    and ``[B, H, W]`` for one channel are reshaped, other layouts refused: ``as_network_images``) through
    ``net`` event by event. See the module docstring and ``SimResult``. ``first_image``: the index of
    ``x[0]`` in a larger set run in parts, so that each image gets the same timing noise (``jitter``) as
    in one call.

    With ``options.time_bits`` the window T must be known (``resolve_time_window``); otherwise a
    ``ValueError`` asks for ``time_window``/``t_cutoff`` or a calibration (``calibrate_time_window``).
    """
    options = options or SimOptions()
    x = _check_inputs(net, x)
    _check_window_options(net, options)
    if isinstance(first_image, bool) or not isinstance(first_image, int) or first_image < 0:
        raise ValueError(f"first_image must be an integer >= 0, got {first_image!r}")
    backend = backend_that_runs(net, options)
    grid = None
    if options.time_bits is not None:
        window = resolve_time_window(net, options)
        if window is None:
            raise ValueError(
                "time_bits needs a finite time window: pass time_window or t_cutoff, or measure one with "
                "calibrate_time_window (the network has no finite t_max)"
            )
        grid = TimeGrid(window, options.time_bits)
    weights = _effective_weights(net, options.weight_bits)
    parts = [
        _run_batch(net, x[i : i + options.batch_size], weights, options, grid, backend, record_layers, first_image + i)
        for i in range(0, x.shape[0], options.batch_size)
    ]
    if not parts:
        parts = [_run_batch(net, x[:0], weights, options, grid, backend, record_layers)]

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts], axis=0)

    t_out = cat("t_out")
    fired = np.isfinite(t_out).any(1)
    decision = np.where(fired, t_out.argmin(1) if t_out.shape[0] else 0, -1).astype(np.int64)
    t_decision = t_out.min(1) if t_out.shape[0] else np.zeros(0)
    layer_times = None
    if record_layers:
        layer_times = [np.concatenate([p["layer_times"][j] for p in parts], axis=0) for j in range(len(net.layers) + 1)]
    return SimResult(
        t_out=t_out,
        decision=decision,
        t_decision=t_decision,
        layer_names=net.names,
        n_neurons=tuple(math.prod(s) for s in net.shapes),
        spikes_in=cat("spikes_in"),
        spikes_out=cat("spikes_out"),
        syn_events=cat("syn_events"),
        neuron_updates=cat("neuron_updates") if grid is not None else None,
        t_last=cat("t_last"),
        options=options,
        grid=grid,
        layer_times=layer_times,
    )


def concat_results(results: list[SimResult]) -> SimResult:
    """One ``SimResult`` from results of consecutive image batches (same network, options and grid)."""
    if not results:
        raise ValueError("concat_results needs at least one result")
    first = results[0]
    for r in results[1:]:
        if r.layer_names != first.layer_names or r.options != first.options or r.grid != first.grid:
            raise ValueError("concat_results: the results come from different networks, options or grids")

    def cat(key: str) -> np.ndarray:
        return np.concatenate([getattr(r, key) for r in results], axis=0)

    layer_times = None
    recorded = [r.layer_times for r in results if r.layer_times is not None]
    if len(recorded) == len(results):
        layer_times = [np.concatenate([t[j] for t in recorded], axis=0) for j in range(len(first.layer_names))]
    return replace(
        first,
        t_out=cat("t_out"),
        decision=cat("decision"),
        t_decision=cat("t_decision"),
        spikes_in=cat("spikes_in"),
        spikes_out=cat("spikes_out"),
        syn_events=cat("syn_events"),
        neuron_updates=cat("neuron_updates") if first.neuron_updates is not None else None,
        t_last=cat("t_last"),
        layer_times=layer_times,
    )


def calibrate_time_window(
    net: SimNetwork, x: Any, options: SimOptions | None = None, *, quantile: float = 0.999, rule: str = "decision"
) -> float:
    """A time window T measured on ``x`` with a continuous-time run (weight quantisation and cut-offs of
    ``options``); at least ``net.t_in``.

    ``rule="decision"`` (default): the latest decision time (first output spike) over ``x``. A clocked chip
    can stop at the first output spike, and by causality no later spike can change the decision, so a
    grid over this T spends its steps where they matter. The grid rounds every layer's spikes up to a
    tick, which can push the latest decisions past T; so with ``options.time_bits`` set, T is then
    widened (by (L + 1) ticks of L spiking layers at a time, at most 64 times) until the grid run makes a
    decision on every sample of ``x`` that the continuous run decides. If no tested window does (a
    decision that exists only because the potential touches theta exactly can be lost on every grid), a
    warning says how many samples lose theirs and the smallest tested window that keeps the most is
    returned. Samples outside ``x`` may still lose theirs.
    ``rule="spikes"``: the ``quantile`` of all finite spike times (every layer, input included);
    ``quantile=1`` gives the latest spike. Trained networks have stragglers (neurons whose summed weight
    barely exceeds 0 fire very late), which make this T far longer than the decisions need.
    A windowed network has nothing to measure: its T is the end of its last window (``net.frame_end``)."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    if rule not in ("decision", "spikes"):
        raise ValueError(f"rule must be 'decision' or 'spikes', got {rule!r}")
    if net.frame_end is not None:
        _check_window_options(net, options or SimOptions())
        return net.frame_end
    asked = options or SimOptions()
    options = replace(asked, time_bits=None, time_window=None)
    res = simulate(net, x, options, record_layers=rule == "spikes")
    if rule == "decision":
        decided = np.isfinite(res.t_decision)
        window = max(net.t_in, float(res.t_decision[decided].max()) if decided.any() else 0.0)
        if asked.time_bits is None or not decided.any():
            return window
        grow = 1.0 + (len(net.spiking_layers()) + 1) / 2**asked.time_bits
        best_window, best_kept = window, -1
        for _ in range(64):
            grid = simulate(net, x, replace(asked, time_window=window))
            kept = int(np.isfinite(grid.t_decision[decided]).sum())
            if kept == int(decided.sum()):
                return window
            if kept > best_kept:  # the smallest tested window that keeps the most decisions
                best_window, best_kept = window, kept
            window *= grow
        warnings.warn(
            f"{int(decided.sum()) - best_kept} of the {int(decided.sum())} calibration samples decided in "
            f"continuous time lose their decision on every {asked.time_bits}-bit grid tried; using the window "
            f"that keeps the most ({best_window:.6g})",
            stacklevel=2,
        )
        return best_window
    assert res.layer_times is not None
    # The input and the spiking layers (pooling and flattening only repeat spikes).
    cols = [0, *(i + 1 for i in net.spiking_layers())]
    finite = np.concatenate([res.layer_times[c][np.isfinite(res.layer_times[c])].ravel() for c in cols])
    t_q = float(np.quantile(finite, quantile)) if finite.size else 0.0
    return max(net.t_in, t_q)
