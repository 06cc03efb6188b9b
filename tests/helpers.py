"""Shared test helpers: the one tolerance table, ``assert_close``, parameter lists with readable ids (among them
``ROUNDS_ONTO_INPUT``, the spike that rounds onto its last causal input),
``load_script`` for the programs under ``scripts/`` (not a package), and the layers built to put
crossings within a rounding step of an input time (``crossings_*``, ``assert_weight_sum_is_causal_mask``), and
``window_grid_reference``, the windowed neuron found on a fine grid of its window."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

__all__ = [
    "BACKENDS",
    "DTYPES",
    "ROUNDS_ONTO_INPUT",
    "TOLERANCES",
    "WINDOW_GRID",
    "assert_close",
    "assert_weight_sum_is_causal_mask",
    "crossings_just_after_an_input",
    "crossings_just_before_the_next_input",
    "load_script",
    "to_numpy",
    "window_grid_reference",
]

#: (kind, dtype) -> (rtol, atol). The check is |actual - expected| <= rtol * |expected| + atol * scale,
#: with scale = max(1, max |expected|), so atol is relative to the tensor's magnitude (sums of many
#: terms, e.g. weight gradients over a batch, can cancel to values far below their terms).
#: "fwd": spike times; "grad": gradients (a backward multiplies by 1/W_j, so it gets more slack).
TOLERANCES: dict[tuple[str, torch.dtype], tuple[float, float]] = {
    ("fwd", torch.float64): (1e-9, 1e-9),
    ("fwd", torch.float32): (1e-5, 1e-6),
    ("grad", torch.float64): (1e-8, 1e-9),
    ("grad", torch.float32): (1e-4, 1e-5),
}

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("numba", id="numba")]
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
# (dtype, w_first) with inputs at 0 and 1 (weights w_first and 1, theta 1): the exact spike lies less than
# half a rounding step after the input at 1, so the closed form 2 / (w_first + 1) rounds onto 1; both
# inputs are causal (V(1) = w_first < theta), and dt/dt_i = w_i / W ~ [0.5, 0.5].
ROUNDS_ONTO_INPUT = [
    pytest.param(torch.float32, 0.99999994, id="f32"),  # 1 - 2^-24: exactly 1 + 3e-8, rounds to 1.0
    pytest.param(torch.float64, 1 - 2.0**-53, id="f64"),  # exactly 1 + 2^-54 + ..., rounds to 1.0
]


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(name: str, actual, expected, dtype: torch.dtype, kind: str = "fwd", scale=None) -> None:
    """Assert ``actual`` matches ``expected`` within the tolerance for ``(kind, dtype)``.

    Shapes must be equal, neither side may hold NaN, and the +inf / -inf patterns must match exactly
    (a neuron that fires in one and not the other is a failure, whatever the tolerance). ``scale``
    (optional, broadcastable to the shape) replaces the default magnitude that ``atol`` multiplies,
    e.g. the sum of absolute terms of a gradient whose terms cancel.
    """
    rtol, atol = TOLERANCES[(kind, dtype)]
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    assert not np.isnan(e).any(), f"{name}: the expected values hold NaN (bad test)"
    assert not np.isnan(a).any(), (
        f"{name}: {int(np.isnan(a).sum())} NaN value(s) at {np.argwhere(np.isnan(a))[:5].tolist()}"
    )
    for sign, label in ((1, "+inf"), (-1, "-inf")):
        pa, pe = np.isinf(a) & (np.sign(a) == sign), np.isinf(e) & (np.sign(e) == sign)
        bad = np.argwhere(pa != pe)
        assert not len(bad), (
            f"{name}: {label} pattern differs at {len(bad)} position(s), first {bad[:5].tolist()}: "
            f"actual {[a[tuple(i)] for i in bad[:5]]} expected {[e[tuple(i)] for i in bad[:5]]}"
        )
    fin = np.isfinite(e)
    if not fin.any():
        return
    if scale is None:
        scale = max(1.0, float(np.abs(e[fin]).max()))
    else:
        scale = np.maximum(1.0, np.broadcast_to(to_numpy(scale), e.shape)[fin])
    err = np.abs(a[fin] - e[fin])
    allowed = rtol * np.abs(e[fin]) + atol * scale
    worst = int(np.argmax(err - allowed))
    assert (err <= allowed).all(), (
        f"{name} ({kind}, {dtype}): {int((err > allowed).sum())} of {err.size} values out of tolerance "
        f"(rtol={rtol}, atol={atol}*scale); worst: actual {a[fin][worst]!r} expected {e[fin][worst]!r}"
    )


def load_script(name: str, folder: str = "scripts") -> ModuleType:
    """Import ``<folder>/<name>.py`` (``scripts/`` or ``examples/``) as a module (its ``main`` is not run)."""
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crossings_just_after_an_input(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """float32 ``(t_in [R, 3], weight [R, 3], s [R])``: on its own row, neuron r's first input alone brings
    V(s_r) to theta (1 - d), d of 1-3 float32 steps, and its second arrives at s_r, so its crossing lies
    within a rounding step after s_r; a third input comes later. (Neuron r on other rows is just another
    neuron.)"""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.25, 4.0, rows).astype(np.float32)
    w1 = (1.0 - rng.integers(1, 4, rows) * 2.0**-24) / s.astype(np.float64)
    t = torch.tensor(np.stack([np.zeros(rows, np.float32), s, s + 1], 1))
    w = torch.tensor(np.stack([w1, rng.uniform(0.5, 4.0, rows), rng.uniform(-1, 1, rows)], 1).astype(np.float32))
    return t, w, s


def crossings_just_before_the_next_input(
    rows: int, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(t_in [R, 3], weight [R, 3], t_next [R])`` in ``dtype``: on its own row, neuron r's first two inputs
    give the candidate q = (theta + B) / A (theta = 1, computed in ``dtype``) and its third input arrives one
    step of ``dtype`` below q, so the firing test and the rounded quotient can disagree about it."""
    npt = np.float32 if dtype == torch.float32 else np.float64
    rng = np.random.default_rng(seed)
    t0 = rng.uniform(0, 1, rows).astype(npt)
    t1 = (t0 + rng.uniform(0, 1, rows)).astype(npt)
    w0 = rng.uniform(0.1, 2, rows).astype(npt)
    w1 = rng.uniform(0.1, 2, rows).astype(npt)
    q = ((npt(1) + (w0 * t0 + w1 * t1).astype(npt)) / (w0 + w1).astype(npt)).astype(npt)
    t_next = np.nextafter(q, npt(0))
    t = torch.tensor(np.stack([t0, t1, t_next], 1))
    w = torch.tensor(np.stack([w0, w1, rng.uniform(0.1, 2, rows).astype(npt)], 1))
    return t, w, t_next


def assert_weight_sum_is_causal_mask(t_in, weight, t_out, w_sum) -> None:
    """The forward's W_j (``w_sum [R, M]``) is the summed weight of the inputs the backward counts as causal,
    t_i < t_out (``t_in [R, N]``, ``weight [M, N]``), for every firing neuron of every row."""
    t_in, weight, t_out, w_sum = (torch.as_tensor(to_numpy(x)) for x in (t_in, weight, t_out, w_sum))
    causal = t_in.unsqueeze(1) < t_out.unsqueeze(2)  # [R, M, N]
    expected = (weight.unsqueeze(0) * causal).sum(2)
    fired = torch.isfinite(t_out)
    bad = fired & ~torch.isclose(w_sum, expected, rtol=1e-6, atol=1e-9)
    assert fired.any()
    assert not bad.any(), f"{int(bad.sum())} of {int(fired.sum())} firing neurons: W_j is not the weight of t_i < t_out"


#: Grid points of ``window_grid_reference`` over the window: exact to (t_end - t_start) / 20000.
WINDOW_GRID = 20001


def window_grid_reference(
    t_in: np.ndarray, weight: np.ndarray, t_start: float, t_end: float, theta: float = 1.0
) -> np.ndarray:
    """The windowed neuron (``relpsp.window``) without its closed form: ``t_in [B, N]``, ``weight [M, N]``
    -> the first of ``WINDOW_GRID`` times in [t_start, t_end] with V(t) = sum_i w_i max(0, t - t_i) >=
    theta(t) = theta * (t_end - t) (t_end if none; theta < 1 only under training-time spike dropout)."""
    ts = np.linspace(t_start, t_end, WINDOW_GRID)
    out = np.empty((t_in.shape[0], weight.shape[0]))
    for r in range(t_in.shape[0]):
        psp = np.where(
            np.isfinite(t_in[r])[None, :], np.maximum(0.0, ts[:, None] - np.nan_to_num(t_in[r], posinf=0)), 0.0
        )
        v = psp @ weight.T  # [WINDOW_GRID, M]
        above = v >= theta * (t_end - ts)[:, None]
        first = np.where(above.any(0), above.argmax(0), WINDOW_GRID - 1)
        out[r] = ts[first]
    return out
