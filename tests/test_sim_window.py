"""The event-driven simulator and the cost model on windowed networks (``model.kernel = "window"``).

Checked against three things that do not share its code: the torch model (``relpsp.window``'s closed
form, float64), the windowed neuron found on a fine grid of its window (``window_grid_reference``), and,
on a time grid, a clocked neuron stepped tick by tick (``clocked_window_layer`` below) with weights and
times chosen so that every sum is exact in float64.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from relpsp import cli
from relpsp.checkpoint import save_checkpoint
from relpsp.config import Config, ModelConfig, config_to_dict
from relpsp.export.nir import to_nir
from relpsp.hw import estimate_cost, get_preset
from relpsp.models import build_model, layer_outputs, model_arrays
from relpsp.sim import (
    SimConv,
    SimDense,
    SimFlatten,
    SimNetwork,
    SimOptions,
    SimPool,
    TimeGrid,
    calibrate_time_window,
    network_from_arrays,
    resolve_time_window,
    run_layer,
    simulate,
    standardized_rows,
    window_fire_rows,
)
from relpsp.window import standardized_weight, window_linear
from tests.helpers import WINDOW_GRID, window_grid_reference

WINDOW_KW = dict(kernel="window", window=2.0, init_mean=0.5, init_std=1.5)


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Intensities with about a third of the pixels at 0 (no spike), so the first layer sees rows with
    and without every input."""
    x = np.random.default_rng(seed).random((n, *shape))
    x[x < 0.35] = 0.0
    return x


def _model_config(arch: str, shape: tuple[int, ...], weight_norm: bool) -> dict:
    cfg = ModelConfig(arch=arch, input_shape=shape, weight_norm=weight_norm, **WINDOW_KW)
    return config_to_dict(Config(model=cfg))["model"]


def _windowed_model(arch: str, shape: tuple[int, ...], weight_norm: bool, seed: int = 0) -> torch.nn.Sequential:
    """A windowed network with spread-out gains (with weight_norm), as after training."""
    torch.manual_seed(seed)
    model = build_model(arch, shape, weight_norm=weight_norm, **WINDOW_KW)
    with torch.no_grad():
        for m in model:
            if getattr(m, "gain", None) is not None:
                m.gain.uniform_(0.3, 3.0)
    return model


@pytest.mark.parametrize(
    "arch, shape, weight_norm",
    [
        pytest.param("3C3p1-P2-8-4", (1, 6, 6), True, id="cnn-weight-norm"),
        pytest.param("3C3p1-P2-8-4", (1, 6, 6), False, id="cnn"),
        pytest.param("6-5-3", (6,), True, id="mlp-weight-norm"),
    ],
)
def test_simulator_matches_the_torch_model_layer_by_layer(arch, shape, weight_norm):
    """A checkpoint's arrays (raw weights and gains) through ``network_from_arrays`` give the network the
    torch model is: every layer's spike times agree to float64 rounding, and the three ways a windowed
    neuron fires (at its window's start, inside, at its end) all occur."""
    model = _windowed_model(arch, shape, weight_norm).double().eval()
    net = network_from_arrays(model_arrays(model), _model_config(arch, shape, weight_norm))
    assert net.window == 2.0 and net.frame_end == 1.0 + len(net.spiking_layers()) * 2.0
    x = _images(64, shape, seed=1)
    res = simulate(net, x, SimOptions(backend="numpy"), record_layers=True)
    with torch.no_grad():
        outs = layer_outputs(model, torch.from_numpy(x))
    assert res.layer_times is not None and len(res.layer_times) == len(outs)
    for k, (got, want) in enumerate(zip(res.layer_times, outs)):
        np.testing.assert_allclose(got, want.numpy().reshape(got.shape), rtol=0, atol=1e-9, err_msg=f"layer {k}")
    at_start = inside = at_end = 0
    for i in net.spiking_layers():
        s, e = net.layer_window(i)
        t = res.layer_times[i + 1]
        assert np.isfinite(t).all() and (t >= s).all() and (t <= e).all()  # every neuron fires once, in its window
        at_start += int((t == s).sum())
        at_end += int((t == e).sum())
        inside += int(((t > s) & (t < e)).sum())
    assert at_start > 0 and inside > 0 and at_end > 0
    assert (res.decision == res.t_out.argmin(1)).all()


def test_window_fire_rows_matches_the_neuron_found_on_a_fine_grid():
    rng = np.random.default_rng(3)
    t_in = rng.uniform(0.0, 1.0, (40, 7))
    t_in[rng.random(t_in.shape) < 0.3] = math.inf
    weight = rng.normal(0.1, 0.6, (6, 7))
    got = window_fire_rows(t_in, weight, 1.0, 3.0)
    want = window_grid_reference(t_in, weight, 1.0, 3.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2.0 / (WINDOW_GRID - 1) + 1e-12)


def test_standardized_rows_is_the_training_code_s_weight():
    model = _windowed_model("3C3p1-P2-8-4", (1, 6, 6), True).double()
    for m in model:
        if getattr(m, "gain", None) is not None:
            want = m.effective_weight().detach().numpy()
            got = standardized_rows(m.weight.detach().numpy(), m.gain.detach().numpy(), 0.5)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
            np.testing.assert_allclose(got.reshape(got.shape[0], -1).sum(1), 0.5, atol=1e-12)
    # a row of equal raw weights has no direction in either (the float32 mean of 0.1s rounds)
    raw, gain = torch.full((2, 10), 0.1), torch.tensor([1.0, -2.0])
    want = standardized_weight(raw, gain, 5.0).double().numpy()
    np.testing.assert_array_equal(standardized_rows(raw.numpy(), gain.numpy(), 5.0), want)
    np.testing.assert_array_equal(want, np.full((2, 10), 0.5))


def clocked_window_layer(
    t_ticks: np.ndarray, weight: np.ndarray, dt: float, t_start: float, t_end: float
) -> tuple[np.ndarray, np.ndarray]:
    """A clocked windowed neuron stepped tick by tick: ``t_ticks [R, K]`` input ticks (inf = none),
    ``weight [N, K]`` -> (firing ticks ``[R, N]``, neuron updates ``[R]``). S[n] sums the weights of the
    inputs with tick <= n, V[n + 1] = V[n] + S[n] dt; the neuron fires at the first tick n of
    [ceil(s / dt), ceil(e / dt)] with V[n] >= e - n dt, else at the window's last tick. It is updated on
    every tick from its first input to its firing tick."""
    n_s, n_e = math.ceil(t_start / dt), math.ceil(t_end / dt)
    fire = np.empty((t_ticks.shape[0], weight.shape[0]))
    updates = np.zeros(t_ticks.shape[0], dtype=np.int64)
    for r in range(t_ticks.shape[0]):
        for j in range(weight.shape[0]):
            v, fired_at = 0.0, n_e
            for n in range(n_e + 1):
                if n >= n_s and v >= t_end - n * dt:
                    fired_at = n
                    break
                v += weight[j][t_ticks[r] <= n].sum() * dt
            fire[r, j] = fired_at
            first = t_ticks[r].min()
            if math.isfinite(first):
                updates[r] += max(0, fired_at - int(first))
    return fire, updates


@pytest.mark.parametrize(
    "t_in, window, exact",
    [
        # frame [0, 4], dt = 1/16: weights in 1/16ths and inputs on ticks make every potential exact
        pytest.param(1.0, 1.0, True, id="edges-on-ticks-exact"),
        # frame [0, 3.4], dt = 3.4/64: no window edge is on a tick; real-valued weights, many of them
        # negative enough that 1 + W <= 0 (a potential that never rises to the falling threshold)
        pytest.param(0.7, 0.9, False, id="edges-between-ticks"),
    ],
)
def test_time_grid_matches_a_clocked_neuron_tick_by_tick(t_in, window, exact):
    """Three spiking layers on a 6-bit grid: the simulator agrees with the clocked neuron to the tick,
    counts included."""
    rng = np.random.default_rng(5)
    sizes = (6, 5, 4, 3)
    if exact:
        weights = [rng.integers(-6, 9, (n, k)) / 16 for k, n in itertools.pairwise(sizes)]
        x = rng.integers(0, 17, (30, 6)) / 16  # on ticks of the input window; x = 0 never fires
    else:
        weights = [rng.normal(-0.1, 0.5, (n, k)) for k, n in itertools.pairwise(sizes)]
        x = _images(30, (6,), seed=7)
    net = SimNetwork(tuple(SimDense(w) for w in weights), (6,), t_in=t_in, window=window)
    res = simulate(net, x, SimOptions(time_bits=6, backend="numpy"), record_layers=True)
    assert res.grid == TimeGrid(t_in + 3 * window, 6) and res.neuron_updates is not None
    assert res.layer_times is not None
    dt = res.grid.dt
    ticks = np.where(x > 0, np.ceil(t_in * (1.0 - x) / dt - 1e-9), np.inf)
    held_low = 0
    for k, w in enumerate(weights):
        s, e = net.layer_window(k)
        fire, updates = clocked_window_layer(ticks, w, dt, s, e)
        np.testing.assert_array_equal(res.layer_times[k + 1], fire * dt, err_msg=f"layer {k + 1}")
        np.testing.assert_array_equal(res.neuron_updates[:, k + 1], updates)
        np.testing.assert_array_equal(res.syn_events[:, k + 1], np.isfinite(ticks).sum(1) * w.shape[0])
        held_low += int((1.0 + np.where(np.isfinite(ticks), 1.0, 0.0) @ w.T <= 0).sum())
        ticks = fire
    assert exact or held_low > 0


def test_time_grid_checks_a_window_from_its_first_tick():
    """A window edge between ticks: the clocked neuron is first checked at the tick after s. Here (one
    neuron, 1 + W = -1, so V(t) - (e - t) falls) it is above the threshold at s = 0.75 but no longer at
    that tick, n_s dt = 0.825, so on the grid it fires at the window's end, not at its start."""
    net = SimNetwork((SimDense(np.array([[1.9, -3.9]])),), (2,), t_in=0.75, window=0.9)
    dt = 1.65 / 16
    x = np.array([[1.0, 1.0 - 5.5 * dt / 0.75]])  # spikes at t = 0 and on tick 6
    # in continuous time, the same input spikes make it fire at the window's start
    assert window_fire_rows(np.array([[0.0, 6 * dt]]), net.layers[0].weight, 0.75, 1.65)[0, 0] == 0.75
    res = simulate(net, x, SimOptions(time_bits=4), record_layers=True)
    assert res.layer_times is not None and res.layer_times[0][0, 1] == 6 * dt
    fire, _ = clocked_window_layer(np.array([[0.0, 6.0]]), net.layers[0].weight, dt, 0.75, 1.65)
    assert fire[0, 0] == 16 and res.t_out[0, 0] == 16 * dt


def test_time_grid_is_close_to_continuous_time():
    model = _windowed_model("3C3p1-P2-8-4", (1, 6, 6), True).double()
    net = network_from_arrays(model_arrays(model), _model_config("3C3p1-P2-8-4", (1, 6, 6), True))
    x = _images(64, (1, 6, 6), seed=2)
    exact = simulate(net, x, SimOptions(backend="numpy"))
    fine = simulate(net, x, SimOptions(time_bits=20, backend="numpy"))
    assert fine.grid is not None and fine.grid.window == net.frame_end == resolve_time_window(net, SimOptions())
    # each of the three spiking layers can add at most one tick
    assert np.abs(fine.t_out - exact.t_out).max() <= 3 * fine.grid.dt + 1e-12
    assert (fine.decision == exact.decision).mean() >= 0.95


def test_counts_and_cost_of_a_windowed_network():
    """Every windowed neuron fires: each layer emits one spike per neuron, and each spike reaches every
    neuron of the next layer (a convolution's through its receptive fields)."""
    model = _windowed_model("3C3p1-P2-8-4", (1, 6, 6), True)
    net = network_from_arrays(model_arrays(model), _model_config("3C3p1-P2-8-4", (1, 6, 6), True))
    x = _images(16, (1, 6, 6), seed=4)
    res = simulate(net, x, SimOptions(time_bits=8))
    sizes = [math.prod(s) for s in net.shapes]
    for i in net.spiking_layers():
        assert (res.spikes_out[:, i + 1] == sizes[i + 1]).all()
    dense = net.spiking_layers()[-2:]  # 8 and 4 neurons, fed by every neuron before them
    assert (res.syn_events[:, dense[0] + 1] == sizes[dense[0]] * 8).all()
    assert (res.syn_events[:, dense[1] + 1] == 8 * 4).all()
    report = estimate_cost(res, net, get_preset("horowitz45_int8"), labels=np.zeros(16, dtype=np.int64))
    assert report.n_ticks == 256 and report.syn_events == pytest.approx(res.syn_events.sum(1).mean())
    assert report.e_total_uj > 0 and report.neuron_updates > 0


def test_windowed_network_settings_that_do_not_apply_are_refused():
    net = SimNetwork((SimDense(np.ones((2, 3)) / 4),), (3,), t_in=1.0, window=1.0)
    x = np.full((2, 3), 0.5)
    for options in (SimOptions(t_cutoff=1.5), SimOptions(time_bits=4, time_window=3.0)):
        with pytest.raises(ValueError, match="do not apply"):
            simulate(net, x, options)
    with pytest.raises(ValueError, match="do not apply"):
        calibrate_time_window(net, x, SimOptions(t_cutoff=1.5))
    with pytest.raises(ValueError, match="jitter is not supported for a windowed network"):
        simulate(net, x, SimOptions(jitter=0.01))
    assert calibrate_time_window(net, x) == 2.0
    with pytest.raises(ValueError, match="rule must be"):
        calibrate_time_window(net, x, rule="latest")
    deep = SimNetwork(tuple(SimDense(np.ones((3, 3)) / 4) for _ in range(4)), (3,), t_in=1.0, window=0.1)
    with pytest.raises(ValueError, match="less than one tick"):
        simulate(deep, x, SimOptions(time_bits=2))  # dt = 1.4 / 4 > the window
    with pytest.raises(ValueError, match="after the window's start"):
        window_fire_rows(np.array([[0.5, 1.2]]), np.ones((1, 2)), 1.0, 2.0)
    # a float32 model's spike at its window's end may lie an ulp above the float64 edge: accepted
    assert float(np.float32(1.1)) > 1.1
    assert np.isfinite(window_fire_rows(np.array([[0.5, float(np.float32(1.1))]]), np.ones((1, 2)), 1.1, 2.0)).all()
    with pytest.raises(ValueError, match="after the window's start"):
        run_layer(net, 0, np.array([[0.5, 1.2, math.inf]]))
    with pytest.raises(ValueError, match="theta or t_max"):
        SimNetwork((SimDense(np.ones((2, 3)), theta=2.0),), (3,), window=1.0)
    with pytest.raises(ValueError, match="window must be"):
        SimNetwork((SimDense(np.ones((2, 3))),), (3,), window=0.0)
    layers = (SimConv(np.ones((1, 1, 2, 2))), SimPool(2), SimFlatten(), SimDense(np.ones((2, 1))))
    cnn = SimNetwork(layers, (1, 4, 4), window=1.0)
    assert cnn.layer_window(3) == (2.0, 3.0)
    with pytest.raises(ValueError, match="no neurons"):
        cnn.layer_window(1)
    with pytest.raises(ValueError, match="no NIR form"):
        to_nir(net)


def test_checkpoint_arrays_of_a_windowed_network_are_checked():
    model = _windowed_model("6-5-3", (6,), True)
    arrays = model_arrays(model)
    cfg = _model_config("6-5-3", (6,), True)
    missing = {k: v for k, v in arrays.items() if k != "model.1.gain"}
    with pytest.raises(ValueError, match=r"model\.1\.gain"):
        network_from_arrays(missing, cfg)
    with pytest.raises(ValueError, match="has shape"):
        network_from_arrays({**arrays, "model.1.gain": np.ones(4, np.float32)}, cfg)
    with pytest.raises(ValueError, match="weight_norm must be true or false"):
        network_from_arrays(arrays, {**cfg, "weight_norm": "yes"})
    with pytest.raises(ValueError, match=r"'alpha' PSP kernel.* and windowed networks only, the NIR export ReL-PSP"):
        network_from_arrays(arrays, {**cfg, "kernel": "alpha"})


def test_cli_simulate_and_cost_run_a_windowed_checkpoint(tmp_path, capsys):
    """``relpsp simulate --compare`` agrees with the torch model on every decision; ``relpsp cost`` runs on
    the windows' own frame (no calibration); ``relpsp export`` says why it cannot."""
    arch, shape = "3C3p1-P2-8-4", (1, 6, 6)
    model = _windowed_model(arch, shape, True)
    cfg = Config(model=ModelConfig(arch=arch, input_shape=shape, weight_norm=True, **WINDOW_KW))
    ckpt = tmp_path / "window.ckpt"
    save_checkpoint(ckpt, model_arrays(model), {"config": config_to_dict(cfg), "version": "0.1.0"})
    data = tmp_path / "data.npz"
    np.savez(data, x=_images(24, shape, seed=6).astype(np.float32), y=np.arange(24) % 4)
    out = tmp_path / "sim.json"
    rc = cli.main(["simulate", str(ckpt), "--dataset", str(data), "--compare", "--compare-dtype", "float64",
                   "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["compare"]["decision_agreement"] == 1.0
    assert summary["compare"]["max_abs_dt_all"] < 1e-9
    assert sum(summary["compare"]["fire_in_one_only"].values()) == 0
    assert summary["options"]["backend"] == "numpy"  # what runs windowed layers, whatever --backend says
    cost = tmp_path / "cost.json"
    capsys.readouterr()
    rc = cli.main(["cost", str(ckpt), "--dataset", str(data), "--time-bits", "8", "--backend", "numba",
                   "--out", str(cost)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "(numpy backend)" in capsys.readouterr().out
    payload = json.loads(cost.read_text())
    assert payload["backend"] == "numpy"  # as simulate reports it
    assert payload["time_window"] == 7.0 and payload["time_window_calibrated"] is False
    assert payload["report"]["n_ticks"] == 256
    rc = cli.main(["cost", str(ckpt), "--dataset", str(data), "--t-cutoff", "3"])
    assert rc != 0 and "do not apply" in capsys.readouterr().err
    # the windows fix T: a --window-rule is refused, and the message names what fixes it
    rc = cli.main(["simulate", str(ckpt), "--dataset", str(data), "--time-bits", "6", "--window-rule", "spikes"])
    assert rc == 2 and "here T = 7 (the windowed network's frame" in capsys.readouterr().err
    rc = cli.main(["export", str(ckpt), str(tmp_path / "w.nir")])
    assert rc != 0 and "no NIR form" in capsys.readouterr().err


def test_a_windowed_neuron_that_meets_its_threshold_exactly_at_the_window_start_fires_there():
    """Inputs at 1 and 0 with w = [-2, 1] and the window [1, 2]: 1 + W = 0 and g(s) = 0, so V(t) = 2 - t
    meets the falling threshold on the whole window; the rule "1 + W <= 0: t = s if g(s) >= 0" gives the
    start, in the torch layer and in the simulator (whose windowed layers are NumPy whatever the backend)."""
    t, w = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[-2.0, 1.0]], dtype=torch.float64)
    assert window_linear(t, w, t_start=1.0, t_end=2.0).item() == 1.0
    net = SimNetwork((SimDense(w.numpy()),), (2,), t_in=1.0, zero_fires=True, window=1.0)
    assert simulate(net, np.array([[0.0, 1.0]]), SimOptions()).t_out.tolist() == [[1.0]]


def test_a_windowed_checkpoint_reads_whatever_theta_its_config_holds():
    """network_from_arrays: for kernel = 'window' the windows set theta and t_max (training's windowed
    layers ignore the config's values too), so a config theta other than 1 is read, not refused."""
    model = _windowed_model("6-5-3", (6,), True)
    cfg = {**_model_config("6-5-3", (6,), True), "theta": 0.5, "t_max": 3.0}
    net = network_from_arrays(model_arrays(model), cfg)
    assert all(net.layers[i].theta == 1.0 and net.layers[i].t_max == math.inf for i in net.spiking_layers())
