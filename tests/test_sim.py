"""The event-driven simulator (``relpsp.sim``) against the torch model, hand cases, a clocked tick-by-tick
reference, quantisation limits, validation, the import rules and ``relpsp simulate`` end to end."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from relpsp import cli
from relpsp.checkpoint import load_checkpoint, save_checkpoint
from relpsp.commands import simulate as commands_simulate
from relpsp.config import Config, DataConfig, ModelConfig, config_to_dict
from relpsp.models import build_model, layer_outputs, model_arrays
from relpsp.sim import (
    SimConv,
    SimDense,
    SimFlatten,
    SimNetwork,
    SimOptions,
    SimPool,
    TimeGrid,
    as_network_images,
    calibrate_time_window,
    concat_results,
    conv_reach,
    fire_rows,
    inputs_from_arrays,
    latency_encode_np,
    load_inputs,
    network_from_arrays,
    network_from_checkpoint,
    quantize_weight,
    resolve_time_window,
    run_layer,
    simulate,
)
from tests.helpers import assert_close

SIM_BACKENDS = [pytest.param("numpy", id="numpy"), pytest.param("numba", id="numba")]

# (arch, input shape): an MLP, a CNN with padding/pooling/stride, and an MLP on image-shaped input.
NETWORKS = [
    pytest.param("12-16-10", (12,), id="mlp"),
    pytest.param("3C3p1-P2-4C3s2-12-5", (2, 9, 9), id="cnn"),
    pytest.param("36-8-4", (1, 6, 6), id="mlp-image-input"),
]


def _model_and_net(arch, shape, *, seed=0, t_max=math.inf, t_in=1.0, zero_fires=False):
    torch.manual_seed(seed)
    # Wide weights around a small positive mean: a mix of firing and silent neurons, negative weights.
    model = build_model(arch, shape, t_max=t_max, t_in=t_in, zero_fires=zero_fires, init_mean=3.0, init_std=2.0)
    model = model.double()
    model_cfg = {"arch": arch, "input_shape": list(shape), "t_max": t_max, "t_in": t_in, "zero_fires": zero_fires}
    net = network_from_arrays(model_arrays(model), model_cfg)
    # model_arrays stores float32; give the torch model the very same weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float().double())
    return model, net


def _images(shape, n=24, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape))
    x[rng.random(x.shape) < 0.3] = 0.0
    return x


@pytest.mark.parametrize("backend", SIM_BACKENDS)
@pytest.mark.parametrize("t_max", [math.inf, 1.7], ids=["no-cutoff", "t_max"])
@pytest.mark.parametrize(("arch", "shape"), NETWORKS)
def test_matches_torch_model(arch, shape, t_max, backend):
    model, net = _model_and_net(arch, shape, t_max=t_max)
    x = _images(shape)
    with torch.no_grad():
        expected = [o.numpy() for o in layer_outputs(model, torch.from_numpy(x))]
    res = simulate(net, x, SimOptions(backend=backend), record_layers=True)
    assert res.layer_times is not None and len(res.layer_times) == len(expected)
    for name, got, exp in zip(net.names, res.layer_times, expected):
        assert_close(f"{arch} {name}", got.reshape(exp.shape), exp, torch.float64)
    t_out = expected[-1]
    fired = np.isfinite(t_out).any(1)
    np.testing.assert_array_equal(res.decision, np.where(fired, t_out.argmin(1), -1))
    assert_close("t_decision", res.t_decision, t_out.min(1), torch.float64)
    # The test is only meaningful with both firing and silent neurons somewhere.
    hidden = np.concatenate([t.reshape(-1) for t in res.layer_times[1:-1]])
    assert np.isfinite(hidden).any() and np.isinf(hidden).any()


@pytest.mark.parametrize("backend", SIM_BACKENDS)
@pytest.mark.parametrize(("arch", "shape"), NETWORKS)
def test_run_layer_is_one_step_of_simulate(arch, shape, backend):
    """Fed the recorded input of layer i, run_layer gives the recorded output of layer i (every layer kind),
    and on the torch model's own per-layer inputs it gives the torch layer's outputs."""
    model, net = _model_and_net(arch, shape, t_max=1.7)
    x = _images(shape)
    opts = SimOptions(backend=backend)
    res = simulate(net, x, opts, record_layers=True)
    assert res.layer_times is not None
    with torch.no_grad():
        torch_times = [o.numpy() for o in layer_outputs(model, torch.from_numpy(x))]
    for i in range(len(net.layers)):
        got = run_layer(net, i, res.layer_times[i], opts)
        np.testing.assert_array_equal(got, res.layer_times[i + 1])
        from_torch = run_layer(net, i, torch_times[i].reshape(res.layer_times[i].shape), opts)
        assert_close(
            f"{arch} layer {i}", from_torch.reshape(torch_times[i + 1].shape), torch_times[i + 1], torch.float64
        )


def test_run_layer_validates():
    _, net = _model_and_net("12-16-10", (12,))
    with pytest.raises(ValueError, match="out of range"):
        run_layer(net, len(net.layers), np.zeros((1, 12)))
    with pytest.raises(ValueError, match=r"spike times \[B, 12\]"):
        run_layer(net, 0, np.zeros((1, 13)))
    with pytest.raises(ValueError, match="time grid"):
        run_layer(net, 0, np.zeros((1, 12)), SimOptions(time_bits=8, time_window=2.0))


@pytest.mark.parametrize("backend", SIM_BACKENDS)
def test_zero_fires_and_t_in(backend):
    model, net = _model_and_net("12-16-10", (12,), t_in=2.5, zero_fires=True)
    x = _images((12,))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    res = simulate(net, x, SimOptions(backend=backend), record_layers=True)
    assert res.layer_times is not None
    np.testing.assert_array_equal(res.layer_times[0], 2.5 * (1 - x))  # x = 0 fires at t_in
    assert_close("t_out", res.t_out, expected, torch.float64)


@pytest.mark.parametrize("backend", SIM_BACKENDS)
def test_hand_cases_first_crossing(backend):
    # theta = 1. Row 0: slope 2 from t = 0 -> fires at 0.5.
    # Row 1: w = [1, -2, 3] at t = [0, 0.5, 2]: V(0.5) = 0.5, falls to -1 at t = 2, then rises with
    #        slope 2 and crosses at t = 3 (the first crossing; the potential never touched 1 before).
    # Row 2: two inputs at the same time t = 1 with w = 0.5 each: V = t - 1, fires at 2.
    # Row 3: only negative weights: never fires.
    t = np.array([[0.0, np.inf, np.inf], [0.0, 0.5, 2.0], [1.0, 1.0, np.inf], [0.0, 0.2, 0.3]])
    w_rows = [np.array([2.0, 0, 0]), np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.5, 0]), np.array([-1.0, -1, -1])]
    expected = [0.5, 3.0, 2.0, np.inf]
    for r, (w, e) in enumerate(zip(w_rows, expected)):
        got = fire_rows(t[r : r + 1], w[None], 1.0, backend=backend)[0, 0]
        assert got == pytest.approx(e, abs=1e-12) if math.isfinite(e) else got == np.inf, (r, got, e)
    # A cut-off drops the late spike of row 1 and keeps the early one of row 0.
    got = fire_rows(t[:2], np.array([[2.0, 0, 0], [1.0, -2.0, 3.0]]), 1.0, t_cut=2.5, backend=backend)
    assert got[0, 0] == pytest.approx(0.5) and got[1, 1] == np.inf


def test_numpy_and_numba_backends_agree_on_long_rows():
    # Rows longer than one chunk of events, ties, negative weights, a cut-off.
    rng = np.random.default_rng(3)
    t = np.round(rng.random((40, 150)) * 4, 2)
    t[rng.random(t.shape) < 0.25] = np.inf
    w = rng.normal(0.004, 0.1, (9, 150))
    for t_cut in (math.inf, 1.5):
        a = fire_rows(t, w, 1.0, t_cut, backend="numpy")
        b = fire_rows(t, w, 1.0, t_cut, backend="numba")
        assert_close("numpy vs numba", a, b, torch.float64)
        assert np.isfinite(a).any() and np.isinf(a).any()


def _tick_reference(t_in_ticks: np.ndarray, weight: np.ndarray, theta: float, dt: float, n_ticks: int) -> np.ndarray:
    """Clocked IF neurons (model.md section 5): V[n] = V[n-1] + S[n-1] * dt, S[n] = sum of w over the
    inputs with tick <= n; fire at the first tick with V[n] >= theta. One image, ``t_in_ticks [K]``."""
    n_out = weight.shape[0]
    v = np.zeros(n_out)
    s = np.zeros(n_out)
    out = np.full(n_out, np.inf)
    for n in range(n_ticks + 1):
        if n > 0:
            v = v + s * dt
        newly = (v >= theta) & np.isinf(out)
        out[newly] = n
        s = s + weight[:, t_in_ticks == n].sum(1)
    return out


def test_time_grid_equals_clocked_tick_simulation():
    rng = np.random.default_rng(5)
    w1 = rng.normal(0.25, 0.35, (7, 10))
    w2 = rng.normal(0.3, 0.5, (3, 7))
    net = SimNetwork((SimDense(w1), SimDense(w2)), (10,))
    x = rng.random((30, 10))
    x[x < 0.2] = 0
    opts = SimOptions(time_bits=5, time_window=4.0)
    res = simulate(net, x, opts, record_layers=True)
    grid = res.grid
    assert grid is not None and grid.dt == 4.0 / 32
    assert res.layer_times is not None
    for b in range(x.shape[0]):
        n_in = grid.ticks(res.layer_times[0][b])
        n_hidden = _tick_reference(n_in, w1, 1.0, grid.dt, grid.n_ticks)
        n_out = _tick_reference(n_hidden, w2, 1.0, grid.dt, grid.n_ticks)
        np.testing.assert_array_equal(grid.ticks(res.layer_times[1][b]), n_hidden)
        np.testing.assert_array_equal(grid.ticks(res.t_out[b]), n_out)
    # Every finite time sits on the grid.
    for t in res.layer_times:
        fin = t[np.isfinite(t)]
        np.testing.assert_allclose(fin / grid.dt, np.round(fin / grid.dt), atol=1e-9)


@pytest.mark.parametrize(("arch", "shape"), NETWORKS[:2])
def test_quantisation_reduces_to_exact_at_high_bits(arch, shape):
    _, net = _model_and_net(arch, shape, t_max=2.0)
    x = _images(shape)
    exact = simulate(net, x, record_layers=True)
    fine = simulate(net, x, SimOptions(weight_bits=44, time_bits=40), record_layers=True)
    assert fine.grid is not None and fine.grid.window == 2.0  # max(t_in, t_max)
    np.testing.assert_array_equal(fine.decision, exact.decision)
    for a, e in zip(fine.layer_times, exact.layer_times):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(e))
        fin = np.isfinite(e)
        assert np.abs(a[fin] - e[fin]).max(initial=0) < 1e-8
    coarse = simulate(net, x, SimOptions(weight_bits=3, time_bits=3))
    assert not np.array_equal(coarse.t_out, exact.t_out)


def test_quantize_weight_levels():
    w = np.array([[-1.0, 0.5, 0.26, 0.0]])
    q, scale = quantize_weight(w, 3)  # levels -3..3, scale 1/3
    assert scale == pytest.approx(1 / 3)
    np.testing.assert_allclose(q, [[-1.0, 2 / 3, 1 / 3, 0.0]])
    np.testing.assert_allclose(quantize_weight(w, 50)[0], w, atol=1e-14)
    with pytest.raises(ValueError, match="weight_bits"):
        quantize_weight(w, 1)


def test_weight_bits_above_64_are_refused():
    """2^(bits-1) used to overflow a float with an OverflowError past about 1,024 bits."""
    w = np.array([[-1.0, 0.5]])
    np.testing.assert_allclose(quantize_weight(w, 64)[0], w)
    for bits in (65, 1100):
        with pytest.raises(ValueError, match=r"weight_bits must be an integer in \[2, 64\]"):
            quantize_weight(w, bits)


def test_clocked_neuron_updates_that_would_overflow_int64_are_refused():
    """40,000 silent neurons counted for 2^48 ticks each pass 2^63: refused, not wrapped to a negative."""
    net = SimNetwork((SimDense(np.zeros((40000, 1))), SimDense(np.ones((1, 40000)))), (1,))
    with pytest.raises(ValueError, match="64-bit count on a 48-bit grid; use fewer time_bits"):
        simulate(net, [[1.0]], SimOptions(time_bits=48, time_window=1.0, backend="numpy"))
    res = simulate(net, [[1.0]], SimOptions(time_bits=40, time_window=1.0, backend="numpy"))
    assert res.neuron_updates is not None and res.neuron_updates[0, 1] == 40000 * 2**40


def test_images_are_reshaped_only_where_the_layout_is_unambiguous():
    x = np.random.default_rng(0).random((2, 18))
    chw = x.reshape(2, 2, 3, 3)
    np.testing.assert_array_equal(as_network_images(x, (2, 3, 3)), chw)  # flat rows
    np.testing.assert_array_equal(as_network_images(chw, (18,)), x)  # images into a flat network
    gray = x[:, :9].reshape(2, 3, 3)
    np.testing.assert_array_equal(as_network_images(gray, (1, 3, 3)), gray[:, None])  # no channel axis
    for bad in (chw.transpose(0, 2, 3, 1), x.reshape(2, 2, 9), x.reshape(2, 6, 3)):  # right size, other layout
        with pytest.raises(ValueError, match=r"the network needs \(2, 3, 3\) \(channels first\)"):
            as_network_images(bad, (2, 3, 3))
    with pytest.raises(ValueError, match="flat rows of 18 values"):
        as_network_images(x[:, :17], (2, 3, 3))
    # simulate refuses a channel-last batch that it used to read scrambled
    net = SimNetwork((SimConv(np.ones((2, 2, 2, 2))), SimFlatten(), SimDense(np.ones((3, 8)))), (2, 3, 3))
    with pytest.raises(ValueError, match="channels first"):
        simulate(net, chw.transpose(0, 2, 3, 1))


def test_time_grid_rounds_up_and_drops_late_spikes():
    g = TimeGrid(1.0, 2)  # ticks 0, 0.25, 0.5, 0.75, 1
    t = np.array([0.0, 0.1, 0.25, 0.25 + 1e-13, 0.26, 1.0, 1.01, np.inf])
    np.testing.assert_array_equal(g.quantize(t), [0.0, 0.25, 0.25, 0.25, 0.5, 1.0, np.inf, np.inf])
    with pytest.raises(ValueError, match="time_bits"):
        TimeGrid(1.0, 0)


@pytest.mark.parametrize("backend", SIM_BACKENDS)
def test_a_crossing_on_the_last_tick_is_kept_though_float_rounding_puts_it_a_hair_past(backend):
    """w = 1/49 from t = 0 crosses at exactly 49, computed as 49 + 1 ulp; on a grid whose window is 49 that
    is within TICK_TOLERANCE of the last tick, so it fires there (as TimeGrid.ticks says), not never."""
    t_star = 1 / (1 / 49)
    assert t_star > 49.0  # the rounding this is about
    net = SimNetwork((SimDense(np.array([[1 / 49]])),), (1,), t_in=1.0)
    grid = TimeGrid(49.0, 8)
    assert grid.ticks(np.array([t_star]))[0] == grid.n_ticks
    res = simulate(net, np.array([[1.0]]), SimOptions(time_bits=8, time_window=49.0, backend=backend))
    assert res.t_out[0, 0] == 49.0 and res.decision[0] == 0
    late = SimNetwork((SimDense(np.array([[1 / 49.5]])),), (1,), t_in=1.0)  # 49.5: past the window, dropped
    res = simulate(late, np.array([[1.0]]), SimOptions(time_bits=8, time_window=49.0, backend=backend))
    assert np.isinf(res.t_out[0, 0]) and res.decision[0] == -1


def test_time_window_rules_and_calibration():
    net = SimNetwork((SimDense(np.full((2, 3), 0.6)),), (3,), t_in=1.5)
    assert resolve_time_window(net, SimOptions()) is None
    assert resolve_time_window(net, SimOptions(t_cutoff=3.0)) == 3.0
    assert resolve_time_window(net, SimOptions(time_window=5.0, t_cutoff=3.0)) == 5.0
    net_cut = SimNetwork((SimDense(np.full((2, 3), 0.6), t_max=1.2),), (3,), t_in=1.5)
    assert resolve_time_window(net_cut, SimOptions()) == 1.5
    x = np.array([[1.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match="time window"):
        simulate(net, x, SimOptions(time_bits=4))
    # inputs at 0 and 0.75; slope 0.6 then 1.2: V(0.75) = 0.45, fires at 0.75 + 0.55 / 1.2
    t_fire = 0.75 + 0.55 / 1.2
    assert calibrate_time_window(net, x, quantile=1.0) == pytest.approx(max(1.5, t_fire))


def test_calibrated_decision_window_keeps_every_decision_on_the_grid():
    """Rounding each layer's spikes up to a tick delays the latest decisions past the continuous run's
    latest decision time; the calibrated window is widened until the grid run decides every sample the
    continuous run decides."""
    _, net = _model_and_net("20-30-20-5", (20,))
    x = _images((20,), n=300)
    decided = np.isfinite(simulate(net, x).t_decision)
    latest = calibrate_time_window(net, x)  # no grid asked: the latest decision time itself
    assert latest == pytest.approx(float(simulate(net, x).t_decision[decided].max()))
    narrow = simulate(net, x, SimOptions(time_bits=4, time_window=latest))
    assert not np.isfinite(narrow.t_decision[decided]).all()  # the plain latest decision time loses some
    window = calibrate_time_window(net, x, SimOptions(time_bits=4))
    assert latest < window < 2 * latest
    grid = simulate(net, x, SimOptions(time_bits=4, time_window=window))
    assert np.isfinite(grid.t_decision[decided]).all()


def test_calibration_that_no_grid_satisfies_warns_and_keeps_the_smallest_best_window():
    """The hidden neuron fires at 0.52, just inside its own cut-off 0.5201; on a 4-bit grid its spike rounds
    up past the cut-off at every window tried, so the output never decides there. Calibration says so and
    returns the smallest window it tested, not the window grown 64 times (about 7e8 times wider)."""
    net = SimNetwork((SimDense(np.array([[1 / 0.52]]), t_max=0.5201), SimDense(np.array([[10.0]]))), (1,), t_in=1.0)
    x = np.array([[1.0]])
    assert simulate(net, x).decision[0] == 0
    with pytest.warns(UserWarning, match="1 of the 1 calibration samples"):
        window = calibrate_time_window(net, x, SimOptions(time_bits=4))
    assert window == 1.0  # t_in: the first window tried
    assert simulate(net, x, SimOptions(time_bits=4, time_window=window)).decision[0] == -1


@pytest.mark.parametrize("options", [SimOptions(), SimOptions(time_bits=4, time_window=3.0)], ids=["exact", "grid"])
def test_an_empty_batch_gives_an_empty_result(options):
    _, net = _model_and_net("3C3p1-P2-4C3s2-12-5", (2, 9, 9))
    res = simulate(net, np.zeros((0, 2, 9, 9)), options, record_layers=True)
    assert res.t_out.shape == (0, 5) and res.decision.shape == (0,) and res.t_decision.shape == (0,)
    assert res.spikes_out.shape == res.syn_events.shape == (0, len(net.names))
    assert res.layer_times is not None and [t.shape[1:] for t in res.layer_times] == list(net.shapes)


def test_t_cutoff_drops_late_spikes_everywhere():
    _, net = _model_and_net("12-16-10", (12,))
    x = _images((12,))
    res = simulate(net, x, SimOptions(t_cutoff=1.0), record_layers=True)
    for t in res.layer_times:
        assert (t[np.isfinite(t)] <= 1.0).all()
    assert res.no_decision_rate() > 0


def test_counts_are_consistent():
    _, net = _model_and_net("3C3p1-P2-4C3s2-12-5", (2, 9, 9))
    res = simulate(net, _images((2, 9, 9)), SimOptions(time_bits=6, time_window=3.0))
    np.testing.assert_array_equal(res.spikes_in[:, 1:], res.spikes_out[:, :-1])
    dense_cols = [i + 1 for i, layer in enumerate(net.layers) if isinstance(layer, SimDense)]
    for c in dense_cols:
        np.testing.assert_array_equal(res.syn_events[:, c], res.spikes_in[:, c] * res.n_neurons[c])
    assert res.neuron_updates is not None and (res.neuron_updates >= 0).all()
    pool_cols = [i + 1 for i, layer in enumerate(net.layers) if isinstance(layer, (SimPool, SimFlatten))]
    assert (res.syn_events[:, pool_cols] == 0).all() and (res.neuron_updates[:, pool_cols] == 0).all()


def test_validation_errors():
    net = SimNetwork((SimDense(np.ones((2, 3))),), (3,))
    with pytest.raises(ValueError, match="intensities"):
        simulate(net, np.full((1, 3), 1.5))
    with pytest.raises(ValueError, match="shape"):
        simulate(net, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="weight_bits"):
        SimOptions(weight_bits=1)
    with pytest.raises(ValueError, match="backend"):
        SimOptions(backend="cuda")
    with pytest.raises(ValueError, match="needs a flat input"):
        SimNetwork((SimDense(np.ones((2, 4))),), (3,))
    with pytest.raises(ValueError, match="last layer must be dense"):
        SimNetwork((SimConv(np.ones((1, 1, 2, 2))),), (1, 3, 3))
    with pytest.raises(ValueError, match="theta"):
        SimDense(np.ones((1, 1)), theta=0.0)
    with pytest.raises(ValueError, match="NaN"):
        SimDense(np.array([[np.nan]]))


@pytest.mark.parametrize(("arch", "shape"), NETWORKS)
def test_jitter_moves_every_spike_by_its_own_draw_after_the_exact_step(arch, shape):
    """With timing noise σ each layer is still exact on its (moved) inputs, and what it emits differs
    from that by draws of mean 0 and standard deviation σ (clamped at 0); no spike appears or vanishes.
    σ = 0 is the noiseless simulation; the draws do not depend on the batch size, and follow the seed."""
    _, net = _model_and_net(arch, shape)
    x = _images(shape, n=40)
    plain = simulate(net, x)
    assert_array_same = np.testing.assert_array_equal
    assert_array_same(simulate(net, x, SimOptions(jitter=0.0)).t_out, plain.t_out)
    sigma = 0.05
    res = simulate(net, x, SimOptions(jitter=sigma, jitter_seed=3, batch_size=7), record_layers=True)
    assert res.layer_times is not None

    def moved_by(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
        fired = np.isfinite(exact)
        return np.where(fired, np.where(fired, got, 0.0) - np.where(fired, exact, 0.0), np.nan)

    clean = simulate(net, x, record_layers=True).layer_times
    assert clean is not None
    moves = [moved_by(res.layer_times[0], clean[0])]
    for i, layer in enumerate(net.layers):
        exact = run_layer(net, i, res.layer_times[i])
        got = res.layer_times[i + 1]
        assert_array_same(np.isfinite(got), np.isfinite(exact))  # the same neurons fire
        if isinstance(layer, (SimDense, SimConv)):
            moves.append(moved_by(got, exact))
        else:  # pooling and flattening pass the moved times on
            assert_array_same(got, exact)
    d = np.concatenate([m[np.isfinite(m)].ravel() for m in moves])
    d = d[np.abs(d) > 0]  # drop spikes clamped at t = 0 from exactly 0
    assert len(d) > 200
    assert abs(d.mean()) < 4 * sigma / math.sqrt(len(d)) + 1e-3 and abs(d.std() / sigma - 1) < 0.15
    again = simulate(net, x, SimOptions(jitter=sigma, jitter_seed=3, batch_size=40))
    assert_array_same(again.t_out, res.t_out)
    parts = [simulate(net, x[i : i + 9], SimOptions(jitter=sigma, jitter_seed=3), first_image=i) for i in (0, 9)]
    assert_array_same(np.concatenate([p.t_out for p in parts]), res.t_out[:18])
    other = simulate(net, x, SimOptions(jitter=sigma, jitter_seed=4))
    fired = np.isfinite(res.t_out)
    assert not np.array_equal(other.t_out[fired], res.t_out[fired])
    assert (res.t_out[fired] >= 0).all()


def test_jitter_settings_are_checked():
    net = SimNetwork((SimDense(np.ones((2, 3))),), (3,))
    for bad in (-0.1, math.nan, math.inf, True, "0.1"):
        with pytest.raises(ValueError, match="jitter must be"):
            SimOptions(jitter=bad)
    for bad_seed in (-1, 1.5, True):
        with pytest.raises(ValueError, match="jitter_seed must be"):
            SimOptions(jitter=0.1, jitter_seed=bad_seed)
    with pytest.raises(ValueError, match="two models of timing error"):
        SimOptions(jitter=0.1, time_bits=6)
    with pytest.raises(ValueError, match="run_layer runs without timing noise"):
        run_layer(net, 0, np.zeros((1, 3)), SimOptions(jitter=0.1))
    with pytest.raises(ValueError, match="first_image must be"):
        simulate(net, np.zeros((1, 3)), first_image=-1)


def test_network_from_checkpoint(tmp_path):
    arch, shape = "3C3p1-P2-4C3s2-12-5", (2, 9, 9)
    model = build_model(arch, shape)
    cfg = Config(model=ModelConfig(arch=arch, input_shape=shape, t_max=2.5, t_in=1.25))
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model_arrays(model), {"config": config_to_dict(cfg), "version": "0.1.0"})
    net, meta = network_from_checkpoint(path)
    assert meta["version"] == "0.1.0" and net.arch == arch and net.t_in == 1.25
    assert [type(layer) for layer in net.layers] == [SimConv, SimPool, SimConv, SimFlatten, SimDense, SimDense]
    assert all(net.layers[i].t_max == 2.5 for i in net.spiking_layers())
    arrays = model_arrays(model)
    del arrays["model.3.weight"]
    with pytest.raises(ValueError, match=r"model\.3\.weight"):
        network_from_arrays(arrays, config_to_dict(cfg)["model"])


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: "hello", "no config.model section"),
        (lambda c: c | {"data": [1]}, r"\[data\] must be a table"),
        (lambda c: c | {"model": c["model"] | {"input_shape": 5}}, "input_shape"),
        (lambda c: c | {"model": c["model"] | {"theta": None}}, "theta"),
        (lambda c: c | {"model": c["model"] | {"t_max": [1]}}, "t_max"),
    ],
    ids=["config-text", "data-list", "shape-int", "theta-null", "t_max-list"],
)
def test_malformed_checkpoint_config_is_a_value_error(tmp_path, capsys, edit, needle):
    """The meta is not covered by the arrays' checksums: a config of the wrong shape or types is refused
    with ``ValueError`` (one CLI line) by the simulator, cost model and export, as by ``relpsp eval``."""
    arch, shape = "20-6-4", (20,)
    cfg = config_to_dict(Config(model=ModelConfig(arch=arch, input_shape=shape)))
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model_arrays(build_model(arch, shape)), {"config": edit(cfg), "version": "0.1.0"})
    with pytest.raises(ValueError, match=needle):
        network_from_checkpoint(path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((3, 20)), y=np.zeros(3, dtype=np.int64))
    for argv in (["simulate", str(path), "--dataset", str(data)], ["export", str(path), str(tmp_path / "m.nir")]):
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("relpsp: error:") and "\n" not in err.strip()
    assert not (tmp_path / "m.nir").exists()


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_weights_that_are_not_real_numbers_are_refused(tmp_path, dtype):
    """A complex weight would lose its imaginary part and a boolean one become 0/1 without a word."""
    arch, shape = "20-6-4", (20,)
    cfg = config_to_dict(Config(model=ModelConfig(arch=arch, input_shape=shape)))
    arrays = {k: v.astype(dtype) for k, v in model_arrays(build_model(arch, shape)).items()}
    with pytest.raises(ValueError, match="must hold real numbers"):
        network_from_arrays(arrays, cfg["model"])
    with pytest.raises(ValueError, match="must hold real numbers"):
        SimDense(np.ones((2, 3), dtype=dtype))


@pytest.mark.parametrize("backend", SIM_BACKENDS)
def test_nan_and_minus_inf_spike_times_are_refused(backend):
    """The two backends would read them differently (numpy: no spike for -inf, numba: a spike at -inf)."""
    w = np.ones((1, 2))
    assert fire_rows(np.array([[0.0, 0.5]]), w, 1.0, backend=backend)[0, 0] == pytest.approx(0.75)
    for bad in (-np.inf, np.nan):
        with pytest.raises(ValueError, match="NaN or -inf"):
            fire_rows(np.array([[bad, 0.5]]), w, 1.0, backend=backend)
    with pytest.raises(ValueError, match="weight must be finite"):
        fire_rows(np.array([[0.0, 0.5]]), np.array([[1.0, np.nan]]), 1.0, backend=backend)
    net = SimNetwork((SimDense(w),), (2,))
    with pytest.raises(ValueError, match="NaN or -inf"):
        run_layer(net, 0, np.array([[np.nan, 0.5]]), SimOptions(backend=backend))


@pytest.mark.parametrize("backend", SIM_BACKENDS)
def test_public_simulator_helpers_refuse_values_the_backends_would_read_differently(backend):
    """theta <= 0 or NaN and a NaN or non-positive cut-off: numpy and numba disagreed (inf against real
    times) or every spike vanished; the other helpers turned NaN into "no spike" or all-NaN weights."""
    t, w = np.array([[0.0, 1.0]]), np.array([[1.0, 1.0], [-1.0, 2.0]])
    for theta in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="theta must be a finite positive number"):
            fire_rows(t, w, theta, backend=backend)
    for t_cut in (math.nan, -1.0, 0.0):
        with pytest.raises(ValueError, match="t_cut must be positive"):
            fire_rows(t, w, 1.0, t_cut, backend=backend)
    # valid calls still run: V_1 = t reaches 1 at t = 1; V_2 = -t, then t - 2 from t = 1: 1 at t = 3
    np.testing.assert_allclose(fire_rows(t, w, 1.0, 4.0, backend=backend), [[1.0, 3.0]])
    np.testing.assert_array_equal(fire_rows(t, w, 1.0, 2.0, backend=backend)[0, 1], np.inf)
    with pytest.raises(ValueError, match=r"intensities must lie in \[0, 1\]"):
        latency_encode_np(np.array([0.5, np.nan]), 1.0, False)
    with pytest.raises(ValueError, match=r"intensities must lie in \[0, 1\]"):
        latency_encode_np(np.array([1.5]), 1.0, False)
    with pytest.raises(ValueError, match="t_in must be"):
        latency_encode_np(np.array([0.5]), -1.0, False)
    np.testing.assert_array_equal(latency_encode_np(np.array([0.0, 0.25, 1.0]), 2.0, False), [np.inf, 1.5, 0.0])
    with pytest.raises(ValueError, match="does not fit"):
        conv_reach((4, 4), 7, 1, 0)
    with pytest.raises(ValueError, match="must be finite"):
        quantize_weight(np.array([np.nan, 1.0]), 4)
    with pytest.raises(ValueError, match="must not be NaN"):
        TimeGrid(1.0, 4).ticks(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="no output neurons"):
        SimNetwork((SimDense(np.zeros((0, 3))),), (3,))


def test_an_empty_dataset_is_refused(tmp_path):
    data = tmp_path / "empty.npz"
    np.savez(data, x=np.zeros((0, 20)), y=np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="holds no samples"):
        load_inputs(str(data))


def test_npz_inputs_that_are_not_archives_of_x_and_y_are_refused(tmp_path, capsys):
    """A bare .npy under an .npz name, a truncated archive and an object array: one ValueError naming the
    file (one CLI line), not numpy's TypeError or zipfile's BadZipFile."""
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((3, 20)), y=np.zeros(3, dtype=np.int64))
    bare = tmp_path / "bare.npz"
    with open(bare, "wb") as f:
        np.save(f, np.zeros((3, 20)))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:60])  # starts PK\x03\x04, ends mid-file
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, dtype=np.int64))
    for path, needle in (
        (bare, "holds a single array"),
        (cut, "is not a readable .npz archive"),
        (objects, "cannot be read"),
    ):
        with pytest.raises(ValueError, match=needle) as info:
            load_inputs(str(path))
        assert str(path) in str(info.value)
    x, y = load_inputs(str(good))
    assert x.shape == (3, 20) and y.tolist() == [0, 0, 0]
    for name, bad_x in (("complex", np.full((3, 20), 0.5j)), ("strings", np.full((3, 20), "a"))):
        # a complex array used to lose its imaginary part with only a warning (every image became zeros)
        np.savez(tmp_path / f"{name}.npz", x=bad_x, y=np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match=r"x is not a real numeric array \(dtype "):
            load_inputs(str(tmp_path / f"{name}.npz"))
    ckpt, _ = _tiny_checkpoint(tmp_path)
    capsys.readouterr()
    assert cli.main(["simulate", str(ckpt), "--dataset", str(cut)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relpsp: error:") and "not a readable .npz archive" in err


def test_sim_imports_no_training_code():
    """relpsp.sim is a second implementation: it may import NumPy, the standard library, numba and
    relpsp.arch/checkpoint/config/data, and itself; never torch or the training code."""
    allowed_relpsp = {"relpsp.arch", "relpsp.checkpoint", "relpsp.config", "relpsp.data"}
    allowed_top = {"numpy", "numba", "__future__"}
    sim_dir = Path(__file__).resolve().parents[1] / "relpsp" / "sim"
    for path in sorted(sim_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "relpsp":
                    ok = name.startswith("relpsp.sim") or any(
                        name == a or name.startswith(a + ".") for a in allowed_relpsp
                    )
                else:
                    import sys

                    ok = top in allowed_top or top in sys.stdlib_module_names
                assert ok, f"{path.name} imports {name}"


def _tiny_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    arch, shape = "2C3p1-P2-6-4", (1, 6, 6)
    torch.manual_seed(2)
    model = build_model(arch, shape, init_mean=4.0, init_std=2.0)
    cfg = Config(model=ModelConfig(arch=arch, input_shape=shape))
    ckpt = tmp_path / "tiny.ckpt"
    save_checkpoint(ckpt, model_arrays(model), {"config": config_to_dict(cfg), "version": "0.1.0"})
    rng = np.random.default_rng(0)
    x = rng.random((20, *shape)).astype(np.float32)
    x[x < 0.3] = 0
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=rng.integers(0, 4, 20))
    return ckpt, data


def test_cli_simulate_end_to_end(tmp_path, capsys):
    ckpt, data = _tiny_checkpoint(tmp_path)
    out = tmp_path / "sim.json"
    rc = cli.main(
        [
            "simulate",
            str(ckpt),
            "--dataset",
            str(data),
            "--compare",
            "--compare-dtype",
            "float64",
            "--backend",
            "numpy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["n_images"] == 20
    assert summary["compare"]["decision_agreement"] == 1.0
    assert summary["compare"]["max_abs_dt_all"] < 1e-9
    assert sum(summary["compare"]["fire_in_one_only"].values()) == 0
    assert summary["accuracy"] == summary["compare"]["torch_accuracy"]
    assert summary["compare"]["note"] is None and summary["options"]["backend"] == "numpy"
    # Quantised run with a calibrated window, compared: the report says the torch model is not quantised.
    out_q = tmp_path / "simq.json"
    capsys.readouterr()
    quantised = ["--time-bits", "6", "--weight-bits", "6", "--compare"]
    rc = cli.main(["simulate", str(ckpt), "--dataset", str(data), *quantised, "--out", str(out_q)])
    assert rc == 0
    assert "note: the torch model runs without --weight-bits" in capsys.readouterr().out
    q = json.loads(out_q.read_text())
    assert q["options"]["time_window_calibrated"] is True and q["options"]["time_bits"] == 6
    assert q["options"]["window_rule"] == "decision" and summary["options"]["window_rule"] is None
    assert "without --weight-bits" in q["compare"]["note"]
    assert q["options"]["backend"] in ("numpy", "numba")  # the one that ran, not "auto"
    # Timing noise: recorded in the report, the same with --compare's batches as in one call, noted there.
    out_j, out_jc = tmp_path / "simj.json", tmp_path / "simjc.json"
    noisy = ["simulate", str(ckpt), "--dataset", str(data), "--jitter", "0.2", "--jitter-seed", "5"]
    assert cli.main([*noisy, "--out", str(out_j)]) == 0
    assert "with timing noise σ 0.2 (seed 5): accuracy" in capsys.readouterr().out
    assert cli.main([*noisy, "--compare", "--batch-size", "3", "--out", str(out_jc)]) == 0
    assert "without --weight-bits, --time-bits, --t-cutoff and --jitter" in capsys.readouterr().out
    j, jc = json.loads(out_j.read_text()), json.loads(out_jc.read_text())
    assert j["options"]["jitter"] == 0.2 and j["options"]["jitter_seed"] == 5
    assert summary["options"]["jitter"] == 0.0 and summary["options"]["jitter_seed"] is None
    assert jc["accuracy"] == j["accuracy"] and jc["mean_decision_time"] == j["mean_decision_time"]
    assert jc["compare"]["max_abs_dt_all"] > 1e-3  # the noise shows against the noiseless torch model
    assert cli.main([*noisy, "--time-bits", "6"]) == 2
    assert "two models of timing error" in capsys.readouterr().err
    # Bad input: one-line error, exit code 2.
    assert cli.main(["simulate", str(tmp_path / "missing.ckpt"), "--dataset", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # grid settings without a grid (an explicit --window-rule decision, the default rule, included)
    for flags in (["--time-window", "2"], ["--window-rule", "spikes"], ["--window-rule", "decision"]):
        assert cli.main(["simulate", str(ckpt), "--dataset", str(data), *flags]) == 2
        assert "need --time-bits" in capsys.readouterr().err
    # a rule where T is already fixed would be ignored: refused, naming T
    for fixing in (["--time-window", "2"], ["--t-cutoff", "3"]):
        argv = ["simulate", str(ckpt), "--dataset", str(data), "--time-bits", "6", "--window-rule", "spikes"]
        assert cli.main([*argv, *fixing]) == 2
        assert "--window-rule measures T only when nothing fixes it; here T = " in capsys.readouterr().err


def test_cli_simulate_takes_flat_images_and_checks_labels(tmp_path, capsys):
    """Images as flat rows run (and compare) as the network's (C, H, W); labels outside the network's
    classes are refused, and an image without a decision is wrong whatever its label."""
    ckpt, data = _tiny_checkpoint(tmp_path)
    with np.load(data) as d:
        x, y = d["x"], d["y"]
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=x.reshape(len(x), -1), y=y)
    outs = []
    for source in (data, flat):
        out = tmp_path / f"{source.stem}.json"
        rc = cli.main(["simulate", str(ckpt), "--dataset", str(source), "--compare", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        outs.append(json.loads(out.read_text()))
    assert outs[0]["accuracy"] == outs[1]["accuracy"] and outs[1]["compare"]["decision_agreement"] == 1.0
    for bad in (np.full_like(y, 4), np.full_like(y, -1)):  # 4 outputs: classes 0..3
        np.savez(tmp_path / "bad.npz", x=x, y=bad)
        capsys.readouterr()
        assert cli.main(["simulate", str(ckpt), "--dataset", str(tmp_path / "bad.npz")]) == 2
        assert "labels must be classes 0..3" in capsys.readouterr().err
    _, net = _model_and_net("12-16-10", (12,))
    res = simulate(net, np.zeros((3, 12)))  # nothing fires
    assert (res.decision == -1).all() and res.accuracy(np.full(3, -1)) == 0.0


def test_cli_simulate_warns_that_npz_images_skip_the_trained_preprocessing(tmp_path, capsys):
    """A network trained on inverted intensities gets an .npz file's images as they are: said on stderr."""
    ckpt, data = _tiny_checkpoint(tmp_path)
    assert cli.main(["simulate", str(ckpt), "--dataset", str(data)]) == 0
    assert "warning" not in capsys.readouterr().err
    arch, shape = "2C3p1-P2-6-4", (1, 6, 6)
    model = build_model(arch, shape, init_mean=4.0, init_std=2.0)
    cfg = Config(model=ModelConfig(arch=arch, input_shape=shape), data=DataConfig(dataset="mnist", invert=True))
    inverted = tmp_path / "inverted.ckpt"
    save_checkpoint(inverted, model_arrays(model), {"config": config_to_dict(cfg), "version": "0.1.0"})
    assert cli.main(["simulate", str(inverted), "--dataset", str(data)]) == 0
    err = capsys.readouterr().err
    assert "warning: the network was trained with data.invert; the .npz images are used as they are" in err


def test_tied_decision_rate_counts_shared_earliest_outputs():
    _, net = _model_and_net("12-16-10", (12,))
    res = simulate(net, _images((12,)))
    res.t_out = np.array([[1.0, 1.0, 2.0], [0.5, 1.0, 0.7], [np.inf, np.inf, np.inf], [2.0, 3.0, 2.0]])
    res.decision = np.array([0, 0, -1, 0])
    assert res.tied_decision_rate() == 0.5


def yinyang_bias_checkpoint(tmp_path: Path, bias: float = 0.5) -> tuple[Path, Config]:
    """A 5-8-3 Yin-Yang network trained (as its config says) with a bias input of intensity ``bias``."""
    arch = "5-8-3"
    torch.manual_seed(0)
    model = build_model(arch, (5,), init_mean=4.0, init_std=2.0)
    cfg = Config(model=ModelConfig(arch=arch, input_shape=(5,)), data=DataConfig(dataset="yinyang", bias_input=bias))
    ckpt = tmp_path / "yy.ckpt"
    save_checkpoint(ckpt, model_arrays(model), {"config": config_to_dict(cfg), "version": "0.1.0"})
    return ckpt, cfg


def test_cli_simulate_uses_the_checkpoints_data_options(tmp_path, capsys):
    """A Yin-Yang network trained with a bias input has 5 inputs: simulating it on its own dataset by name
    must load the data as it was trained (with the bias column), and agree with the torch model."""
    ckpt, cfg = yinyang_bias_checkpoint(tmp_path)
    out = tmp_path / "sim.json"
    argv = ["simulate", str(ckpt), "--limit", "50", "--compare", "--compare-dtype", "float64", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["n_images"] == 50 and summary["compare"]["decision_agreement"] == 1.0
    assert commands_simulate.checkpoint_data_options(config_to_dict(cfg)["data"], "yinyang") == {"bias": 0.5}
    assert commands_simulate.checkpoint_data_options(config_to_dict(cfg)["data"], "mnist") == {}  # no bias there
    assert commands_simulate.checkpoint_data_options({}, "yinyang") == {}  # a NIR file: no settings
    inverted = config_to_dict(Config(data=DataConfig(dataset="caltech", invert=True, image_size=(32, 32))))["data"]
    assert commands_simulate.checkpoint_data_options(inverted, "caltech-face-motorbike") == {
        "image_size": (32, 32),
        "invert": True,
    }
    assert commands_simulate.checkpoint_data_options(inverted, "mnist") == {"invert": True}  # as relpsp eval does


def test_simulate_and_cost_take_the_runs_own_splits_as_eval_does(tmp_path, capsys):
    """For a checkpoint on its own dataset, --split train is the run's training subset (data.train_size),
    the images it trained on, as in relpsp eval; before, simulate and cost took the dataset's whole split."""
    import dataclasses

    from relpsp.train import load_splits

    ckpt, cfg = yinyang_bias_checkpoint(tmp_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_size=120))
    save_checkpoint(ckpt, load_checkpoint(ckpt)[0], {"config": config_to_dict(cfg), "version": "0.1.0"})
    x, y = commands_simulate.run_split_inputs({"config": config_to_dict(cfg)}, "train", None, None)
    want = load_splits(cfg)["train"]
    assert np.array_equal(x, want[0].numpy().astype(np.float64)) and np.array_equal(y, want[1].numpy())
    out = tmp_path / "sim.json"
    assert cli.main(["simulate", str(ckpt), "--split", "train", "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["n_images"] == 120
    capsys.readouterr()
    assert cli.main(["cost", str(ckpt), "--split", "train", "--limit", "1000"]) == 0
    assert "simulated 120 images" in capsys.readouterr().out
    assert cli.main(["simulate", str(ckpt), "--split", "bogus"]) == 2
    assert "this run has the splits test, train, val, not 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_sim_fires_when_the_potential_touches_theta_exactly_at_an_inhibitory_input(backend):
    """Inputs at 0 and 1 with w = [1, -5]: V(1) = theta exactly, so the neuron fires at 1, the first t
    with V(t) >= theta (test_dense.py's "touch_at_input_time" for the layers)."""
    net = SimNetwork((SimDense(np.array([[1.0, -5.0]])),), (2,), t_in=2.0)
    res = simulate(net, np.array([[1.0, 0.5]]), SimOptions(backend=backend))
    assert res.t_out.tolist() == [[1.0]]


def test_sim_decision_ties_go_to_the_lowest_class():
    """Two outputs with equal weights fire together: the decision is the lower index (SimResult)."""
    net = SimNetwork((SimDense(np.array([[2.0], [2.0], [1.0]])),), (1,))
    res = simulate(net, np.array([[1.0]]))
    assert res.t_out[0, 0] == res.t_out[0, 1] < res.t_out[0, 2]
    assert res.decision.tolist() == [0]


def test_sim_keeps_an_input_spike_exactly_at_the_cutoff():
    """With zero_fires a dark pixel fires at t_in = 1.0, exactly the cut-off: only a spike later than the
    cut-off is dropped."""
    net = SimNetwork((SimDense(np.array([[2.0]])),), (1,), zero_fires=True)
    res = simulate(net, np.array([[0.0]]), SimOptions(t_cutoff=1.0), record_layers=True)
    assert res.layer_times is not None and res.layer_times[0].tolist() == [[1.0]]
    assert res.spikes_out[0, 0] == 1


def test_cli_simulate_and_cost_threads(tmp_path, capsys):
    """--threads 1 puts the simulator's compiled kernels on one thread and changes no number; without it
    the thread counts are left as they are; a negative count is refused before anything is read."""
    from relpsp.kernels import cpu_kernels_available
    from relpsp.train.runtime import threads_restored

    ckpt, data = _tiny_checkpoint(tmp_path)
    argv = ["simulate", str(ckpt), "--dataset", str(data), "--backend", "numba" if cpu_kernels_available() else "numpy"]
    out, out1 = tmp_path / "sim.json", tmp_path / "sim1.json"
    with threads_restored():
        if cpu_kernels_available():
            import numba

            numba.set_num_threads(2 if numba.config.NUMBA_NUM_THREADS >= 2 else 1)
            before = numba.get_num_threads()
            assert cli.main([*argv, "--out", str(out)]) == 0
            assert numba.get_num_threads() == before  # no --threads: untouched
        else:
            assert cli.main([*argv, "--out", str(out)]) == 0
        assert cli.main([*argv, "--threads", "1", "--out", str(out1)]) == 0
        if cpu_kernels_available():
            assert numba.get_num_threads() == 1
        assert cli.main(["cost", str(ckpt), "--dataset", str(data), "--threads", "1"]) == 0
    a, b = json.loads(out.read_text()), json.loads(out1.read_text())
    for key in ("accuracy", "mean_decision_time", "n_images"):
        assert a[key] == b[key]
    capsys.readouterr()
    for command in ("simulate", "cost"):
        assert cli.main([command, str(tmp_path / "missing.ckpt"), "--threads", "-1"]) == 2
        assert "--threads must be an integer >= 0, got -1" in capsys.readouterr().err


def test_cli_simulate_compare_defaults_to_float32_and_records_split(tmp_path, capsys):
    """--compare-dtype help: "(default float32: the trained model as it runs)"; docs/HARDWARE.md: "--compare
    also runs the torch model (float32 by default, --compare-dtype float64 for float64)"."""

    ckpt, data = _tiny_checkpoint(tmp_path)
    out = tmp_path / "sim.json"
    capsys.readouterr()
    assert cli.main(["simulate", str(ckpt), "--dataset", str(data), "--compare", "--out", str(out)]) == 0
    assert "vs torch (float32):" in capsys.readouterr().out
    assert json.loads(out.read_text())["compare"]["torch_dtype"] == "float32"
    argv = ["simulate", str(ckpt), "--dataset", str(data), "--compare", "--compare-dtype", "float64"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["compare"]["torch_dtype"] == "float64"


def test_simulate_out_records_the_split(tmp_path, capsys):
    """The --out JSON of a --split train run says "train" (docs/HARDWARE.md: --split val / train are the
    run's own splits), and --limit ("use the first N images") applies to those splits too."""
    import dataclasses

    from relpsp.checkpoint import load_checkpoint, save_checkpoint
    from relpsp.config import config_to_dict

    ckpt, cfg = yinyang_bias_checkpoint(tmp_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_size=120))
    save_checkpoint(ckpt, load_checkpoint(ckpt)[0], {"config": config_to_dict(cfg), "version": "0.1.0"})
    out = tmp_path / "sim.json"
    assert cli.main(["simulate", str(ckpt), "--split", "train", "--out", str(out)]) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["split"] == "train" and res["n_images"] == 120
    # --limit ("use the first N images") holds on the run's own splits too
    assert cli.main(["simulate", str(ckpt), "--split", "train", "--limit", "30", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n_images"] == 30


def test_inputs_from_arrays_takes_the_first_limit_samples_and_refuses_float_labels():
    """``inputs_from_arrays``: 'the first limit samples'; labels 'integers [N]'."""
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 12
    y = np.array([3, 1, 2, 0])
    xs, ys = inputs_from_arrays(x, y, limit=2)
    np.testing.assert_array_equal(xs, x[:2])
    np.testing.assert_array_equal(ys, [3, 1])
    assert ys.dtype == np.int64
    with pytest.raises(ValueError, match="labels must be integers"):
        inputs_from_arrays(x, y.astype(np.float64))


@pytest.mark.parametrize("quantile", [0.05, 0.5, 0.999, 1.0])
def test_spikes_rule_is_the_quantile_of_the_input_and_spiking_layer_times(quantile):
    """rule='spikes': the quantile of all finite spike times of the input and the spiking layers (pooling
    and flattening only repeat spikes), at least t_in (HARDWARE.md, calibrate_time_window)."""
    _, net = _model_and_net("3C3p1-P2-4C3s2-12-5", (2, 9, 9), t_in=1.5)
    x = _images((2, 9, 9))
    res = simulate(net, x, record_layers=True)
    cols = [0, *(i + 1 for i in net.spiking_layers())]
    finite = np.concatenate([res.layer_times[c][np.isfinite(res.layer_times[c])] for c in cols])
    expected = max(net.t_in, float(np.quantile(finite, quantile)))
    if quantile == 0.05:
        assert float(np.quantile(finite, quantile)) < net.t_in  # the t_in floor is what this case checks
    assert calibrate_time_window(net, x, rule="spikes", quantile=quantile) == pytest.approx(expected, rel=1e-12)


def test_calibrated_window_grows_by_l_plus_1_ticks_and_is_the_first_that_keeps_every_decision():
    """HARDWARE.md: 'T is widened, by (L + 1) ticks at a time for L spiking layers, until the grid run
    decides every calibration image that the continuous run decides'."""
    _, net = _model_and_net("20-30-20-5", (20,))
    x = _images((20,), n=300)
    bits = 4
    decided = np.isfinite(simulate(net, x).t_decision)
    latest = calibrate_time_window(net, x)
    window = calibrate_time_window(net, x, SimOptions(time_bits=bits))
    grow = 1 + (len(net.spiking_layers()) + 1) / 2**bits
    steps = math.log(window / latest) / math.log(grow)
    assert steps >= 1 and abs(steps - round(steps)) < 1e-9
    before = simulate(net, x, SimOptions(time_bits=bits, time_window=window / grow))
    assert not np.isfinite(before.t_decision[decided]).all()


def test_t_last_is_the_latest_finite_spike_of_any_layer_input_included():
    """SimResult.t_last: 'the latest finite spike time of any layer (0 if none)'."""
    _, net = _model_and_net("3C3p1-P2-4C3s2-12-5", (2, 9, 9))
    x = _images((2, 9, 9))
    res = simulate(net, x, record_layers=True)
    expected = np.max([np.where(np.isfinite(t), t, 0.0).reshape(len(x), -1).max(1) for t in res.layer_times], 0)
    np.testing.assert_array_equal(res.t_last, expected)
    silent = SimNetwork((SimDense(-np.ones((2, 3))),), (3,))  # only the input spikes
    np.testing.assert_array_equal(simulate(silent, [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]).t_last, [0.5, 0.0])


def test_concat_results_of_batches_equals_one_run():
    """concat_results: 'One SimResult from results of consecutive image batches'."""
    _, net = _model_and_net("3C3p1-P2-4C3s2-12-5", (2, 9, 9))
    x = _images((2, 9, 9))
    opts = SimOptions(time_bits=6, time_window=3.0)
    whole = simulate(net, x, opts, record_layers=True)
    joined = concat_results([simulate(net, x[i : i + 7], opts, record_layers=True) for i in range(0, len(x), 7)])
    for key in ("t_out", "decision", "t_decision", "spikes_in", "spikes_out", "syn_events", "neuron_updates", "t_last"):
        np.testing.assert_array_equal(getattr(joined, key), getattr(whole, key), err_msg=key)
    assert joined.layer_times is not None
    for a, b in zip(joined.layer_times, whole.layer_times):
        np.testing.assert_array_equal(a, b)


def test_cli_simulate_calibrates_on_all_of_the_first_1000_images(tmp_path, capsys):
    """HARDWARE.md: the window is measured 'on the first 1000 images with calibrate_time_window'."""
    ckpt, data = _tiny_checkpoint(tmp_path)
    out = tmp_path / "q.json"
    argv = ["simulate", str(ckpt), "--dataset", str(data), "--time-bits", "6", "--backend", "numpy", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    net, _ = network_from_checkpoint(ckpt)
    with np.load(data) as d:
        x = d["x"].astype(np.float64)
    want = calibrate_time_window(net, x, SimOptions(time_bits=6, backend="numpy"))
    assert want != calibrate_time_window(net, x[:10], SimOptions(time_bits=6, backend="numpy"))  # meaningful
    assert json.loads(out.read_text())["options"]["time_window"] == pytest.approx(want, rel=1e-12)


def test_cli_simulate_warns_that_npz_images_skip_a_bias_input_of_intensity_0(tmp_path, capsys):
    """data.bias_input: '< 0: none'; 0.0 is a bias column (of intensity 0) that an .npz must already hold."""
    ckpt, _ = yinyang_bias_checkpoint(tmp_path, bias=0.0)
    rng = np.random.default_rng(0)
    data = tmp_path / "yy.npz"
    np.savez(data, x=rng.random((8, 5)), y=rng.integers(0, 3, 8))
    assert cli.main(["simulate", str(ckpt), "--dataset", str(data)]) == 0
    assert "warning: the network was trained with data.bias_input" in capsys.readouterr().err


def test_time_window_needs_every_spiking_layer_to_have_a_finite_t_max():
    """resolve_time_window: 'max(t_in, t_max) when every spiking layer has a finite t_max; else None'."""
    w = np.full((2, 2), 0.6)
    one_cut = SimNetwork((SimDense(w, t_max=1.2), SimDense(w)), (2,), t_in=1.0)
    assert resolve_time_window(one_cut, SimOptions()) is None
    both = SimNetwork((SimDense(w, t_max=1.2), SimDense(w, t_max=3.0)), (2,), t_in=1.0)
    assert resolve_time_window(both, SimOptions()) == 3.0


def test_concat_results_refuses_results_of_other_options_or_grids():
    """concat_results: 'same network, options and grid'; a mix is a ValueError, not a silent merge."""
    _, net = _model_and_net("12-16-10", (12,))
    x = _images((12,), n=4)
    exact = simulate(net, x)
    for other in (SimOptions(weight_bits=4), SimOptions(time_bits=4, time_window=3.0)):
        with pytest.raises(ValueError, match="different networks, options or grids"):
            concat_results([exact, simulate(net, x, other)])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SimDense(np.ones((2, 3)), theta=0.0), "theta must be a finite positive number, got 0.0"),
        (lambda: SimDense(np.ones((2, 3)), t_max=0.0), r"t_max must be > 0 \(or inf for no cut-off\), got 0.0"),
        (lambda: SimDense(np.ones((2, 3)), t_max=math.nan), "t_max must be > 0"),
        (lambda: SimDense(np.ones(3)), r"dense weight must have 2 dimensions, got shape \(3,\)"),
        (lambda: SimConv(np.ones((1, 1, 3, 2))), "conv weight must have a square kernel"),
        (lambda: SimConv(np.ones((1, 1, 3, 3)), stride=0), "conv stride must be an integer >= 1, got 0"),
        (lambda: SimConv(np.ones((1, 1, 3, 3)), padding=-1), "conv padding must be an integer >= 0, got -1"),
        (lambda: SimPool(0), "pool kernel must be an integer >= 1, got 0"),
        (lambda: SimPool(2.5), "pool kernel must be an integer >= 1, got 2.5"),
        (lambda: SimPool(2, stride=0), "pool stride must be an integer >= 1, got 0"),
        (lambda: SimNetwork((), (3,)), "a network needs at least one layer"),
        (lambda: SimNetwork((SimDense(np.ones((2, 3))),), (3, 1)), r"input_shape must be \(N,\) or \(C, H, W\)"),
        (lambda: SimNetwork((SimDense(np.ones((2, 3))),), (3,), t_in=math.inf), "t_in must be a finite positive"),
        (lambda: SimNetwork((SimDense(np.ones((2, 3))),), (4,)), r"layer 0 \(SimDense\): weight \(2, 3\) needs a flat"),
        (
            lambda: SimNetwork((SimConv(np.ones((1, 1, 5, 5))), SimFlatten(), SimDense(np.ones((2, 1)))), (1, 3, 3)),
            r"layer 0 \(SimConv\): kernel 5 is larger than the padded input 3x3",
        ),
        (
            lambda: SimNetwork((SimPool(4), SimFlatten(), SimDense(np.ones((2, 1)))), (1, 3, 3)),
            r"layer 0 \(SimPool\): kernel 4 does not fit the input \(1, 3, 3\)",
        ),
        (lambda: SimNetwork(("dense",), (3,)), r"layer 0 \(str\): unknown layer type str"),
    ],
)
def test_simulator_layers_and_networks_refuse_what_they_cannot_run(build, match):
    """The simulator's public classes check their arguments when built: a ValueError that says what is
    wrong, not a wrong result or an index error in the middle of a simulation."""
    with pytest.raises(ValueError, match=match):
        build()


def test_network_from_arrays_refuses_a_config_or_arrays_that_do_not_fit():
    """Checkpoint arrays and a [model] section read from a file: each mismatch is refused by name."""
    from relpsp.sim import network_from_arrays

    arrays = {"model.1.weight": np.ones((3, 4)), "model.2.weight": np.ones((2, 3))}
    model = {"arch": "4-3-2", "input_shape": [4]}
    assert [layer.weight.shape for layer in network_from_arrays(arrays, model).layers] == [(3, 4), (2, 3)]
    with pytest.raises(ValueError, match="the model config has no 'arch'"):
        network_from_arrays(arrays, {"input_shape": [4]})
    with pytest.raises(ValueError, match="theta, t_max or t_in is not a number"):
        network_from_arrays(arrays, {**model, "theta": "one"})
    with pytest.raises(ValueError, match="zero_fires must be true or false, got 'no'"):
        network_from_arrays(arrays, {**model, "zero_fires": "no"})
    with pytest.raises(ValueError, match=r"model.2.weight has shape \(3, 2\), '4-3-2' needs \(2, 3\)"):
        network_from_arrays({**arrays, "model.2.weight": np.ones((3, 2))}, model)
    with pytest.raises(ValueError, match=r"checkpoint has no array 'model\.2\.weight'"):
        network_from_arrays({"model.1.weight": np.ones((3, 4))}, model)
    conv = {"arch": "2C3-2", "input_shape": [1, 4, 4]}
    conv_arrays = {"model.1.weight": np.ones((2, 1, 3, 2)), "model.3.weight": np.ones((2, 8))}
    with pytest.raises(ValueError, match=r"model.1.weight has shape \(2, 1, 3, 2\), '2C3-2' needs \(2, 1, 3, 3\)"):
        network_from_arrays(conv_arrays, conv)
