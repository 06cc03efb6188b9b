"""The cost model (``relpsp.hw``): counts checked on hand-computed networks, the energy and latency
formulas, presets and ``relpsp cost`` end to end."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from relpsp import cli
from relpsp.hw import PRESETS, HardwarePreset, ann_macs, estimate_cost, get_preset
from relpsp.hw import presets as presets_module
from relpsp.sim import SimConv, SimDense, SimFlatten, SimNetwork, SimOptions, conv_reach, simulate
from tests.test_sim import _tiny_checkpoint

# Two dense layers, theta = 1, t_in = 1. Input x = [1, 0.5, 0, 0.25] -> spikes at t = [0, 0.5, -, 0.75].
#   hidden 0: w = [4, 0, 5, 0]: slope 4 from t = 0 -> fires at 0.25
#   hidden 1: w = [0, 1, 0, 1]: slope 1 from 0.5, V(0.75) = 0.25, slope 2 -> fires at 1.125
#   output 0: w = [1, 0]: slope 1 from 0.25 -> fires at 1.25
#   output 1: w = [0, 4]: slope 4 from 1.125 -> fires at 1.375
W1 = np.array([[4.0, 0, 5, 0], [0, 1, 0, 1]])
W2 = np.array([[1.0, 0], [0, 4]])
X = np.array([[1.0, 0.5, 0.0, 0.25]])

UNIT_PRESET = HardwarePreset(
    name="unit",
    e_synop_pj=1.0,
    e_mem_read_pj_per_byte=1.0,
    e_neuron_update_pj=1.0,
    e_mac_pj=1.0,
    p_static_mw=0.0,
    clock_hz=1e6,
    parallel_synapse_units=1,
    weight_bits=8,
    integer_weights=True,
)


def _two_layer_net() -> SimNetwork:
    return SimNetwork((SimDense(W1), SimDense(W2)), (4,))


def test_hand_computed_two_layer_counts():
    net = _two_layer_net()
    # Grid: T = 2, 3 bits -> dt = 0.25; every time above is already on a tick except 1.125 -> 1.25,
    # which moves output 1 to 1.25 + 0.25 = 1.5.
    res = simulate(net, X, SimOptions(time_bits=3, time_window=2.0), record_layers=True)
    assert res.layer_times is not None
    np.testing.assert_allclose(res.layer_times[1], [[0.25, 1.25]])
    np.testing.assert_allclose(res.t_out, [[1.25, 1.5]])
    assert res.decision.tolist() == [0] and res.t_decision.tolist() == [1.25]
    # spikes: 3 input, 2 hidden, 2 output; synaptic events: 3 x 2 and 2 x 2.
    assert res.spikes_out.tolist() == [[3, 2, 2]]
    assert res.spikes_in.tolist() == [[0, 3, 2]]
    assert res.syn_events.tolist() == [[0, 6, 4]]
    # Neuron updates (ticks from the layer's first input event to the firing tick):
    #   hidden: first input at tick 0; fire ticks 1 and 5 -> 1 + 5 = 6
    #   output: first input at tick 1; fire ticks 5 and 6 -> 4 + 5 = 9
    assert res.neuron_updates is not None and res.neuron_updates.tolist() == [[0, 6, 9]]
    # Continuous time: the exact times of the comment above.
    exact = simulate(net, X)
    np.testing.assert_allclose(exact.t_out, [[1.25, 1.375]])


def test_hand_computed_energy_latency_and_ann():
    net = _two_layer_net()
    res = simulate(net, X, SimOptions(time_bits=3, time_window=2.0))
    rep = estimate_cost(res, net, UNIT_PRESET, labels=np.array([0]))
    assert rep.syn_events == 10 and rep.neuron_updates == 15
    assert rep.spikes == 3 + 2 + 2  # input, hidden, output
    assert rep.weight_bytes_read == 10  # 8-bit weights (the preset's width: the run did not quantise)
    # E = 10 synops + 10 bytes + 15 updates, 1 pJ each, no static power
    assert rep.e_total_uj == pytest.approx(35e-6)
    # cycles = 8 ticks + (10 + 15) / 1 unit; 1 MHz
    assert rep.latency_us == pytest.approx(33.0)
    assert rep.p_avg_mw == pytest.approx(35e-12 / 33e-6 * 1e3)
    assert ann_macs(net) == [0, 8, 4] and rep.ann_macs == 12
    assert rep.e_ann_uj == pytest.approx(12 * (1 + 1) * 1e-6)  # MAC + one byte read each
    assert rep.accuracy == 1.0 and rep.no_decision_rate == 0.0
    # Static power: 2 mW over 33 us; parallel units shorten the latency.
    fast = dataclasses.replace(UNIT_PRESET, p_static_mw=2.0).with_overrides(parallel_synapse_units=5)
    rep2 = estimate_cost(res, net, fast)
    assert rep2.latency_us == pytest.approx(8 + 5)
    # work that does not divide among the units takes whole cycles: ceil(25 / 4) = 7, not 6 or 6.25
    assert estimate_cost(res, net, UNIT_PRESET.with_overrides(parallel_synapse_units=4)).latency_us == 8 + 7
    assert rep2.e_static_uj == pytest.approx(2e-3 * 13e-6 * 1e6)
    assert rep2.e_total_uj == pytest.approx(35e-6 + rep2.e_static_uj)
    # Quantised weights set the width of a weight read.
    res4 = simulate(net, X, SimOptions(weight_bits=4, time_bits=3, time_window=2.0))
    assert estimate_cost(res4, net, UNIT_PRESET).weight_bytes_read == pytest.approx(10 * 0.5)
    d = rep.to_dict()
    assert d["layers"][1]["syn_events"] == 6 and "horowitz" not in rep.table()


def test_cost_report_averages_activity_per_tick_and_keeps_the_slowest_image():
    """The hand net's image (10 synaptic events, 15 updates, 8 ticks: 33 cycles) beside a dark one (no
    spike: the 8 ticks alone): means over the two images, and the worst latency of the two."""
    net = _two_layer_net()
    res = simulate(net, np.concatenate([X, np.zeros_like(X)]), SimOptions(time_bits=3, time_window=2.0))
    rep = estimate_cost(res, net, UNIT_PRESET)
    assert rep.neuron_updates == pytest.approx(7.5) and rep.n_ticks == 8
    assert rep.active_neurons_per_tick == pytest.approx(7.5 / 8)
    assert rep.latency_us == pytest.approx((33 + 8) / 2) and rep.latency_us_max == pytest.approx(33.0)


def test_conv_reach_and_synaptic_events():
    # 5x5 input, kernel 3, stride 2, padding 1 -> 3x3 output. Along one axis the input positions are
    # covered by [1, 2, 1, 2, 1] output positions.
    reach = conv_reach((5, 5), 3, 2, 1)
    ry = np.array([1, 2, 1, 2, 1])
    np.testing.assert_array_equal(reach, np.outer(ry, ry))
    w_conv = np.ones((2, 1, 3, 3)) * 0.6
    net = SimNetwork((SimConv(w_conv, stride=2, padding=1), SimFlatten(), SimDense(np.ones((3, 18)))), (1, 5, 5))
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = x[0, 0, 4, 4] = 1.0  # spikes at t = 0, reach 1, 4 and 1 positions
    res = simulate(net, x, SimOptions(time_bits=4, time_window=4.0))
    assert res.syn_events[0, 1] == (1 + 4 + 1) * 2
    # Neuron updates of the convolution: the output positions that receive an input all get it at
    # tick 0; with slope 0.6 (one input) they fire at 1/0.6 -> tick ceil(1/0.6/0.25) = 7, with slope
    # 1.2 (two inputs) at tick ceil(1/1.2/0.25) = 4. Positions: (0,0) sees (0,0) and (1,1); (0,1),
    # (1,0) see (1,1); (1,1) sees (1,1); (2,2) sees (4,4). 2 channels.
    assert res.neuron_updates is not None
    assert res.neuron_updates[0, 1] == 2 * (4 + 7 + 7 + 7 + 7)
    assert ann_macs(net) == [0, 3 * 3 * 2 * 9, 0, 3 * 18]
    # The spike total counts the input's and the neurons' spikes once: flattening passes the
    # convolution's spikes on (the same count) and adds none.
    out = res.spikes_out[0].tolist()
    assert out[0] == 3 and out[1] > 0 and out[2] == out[1]
    assert estimate_cost(res, net, UNIT_PRESET).spikes == out[0] + out[1] + out[3]


def test_presets_are_valid_and_cited():
    assert {"horowitz45_int8", "horowitz45_int8_sram1mb", "horowitz45_fp32"} <= set(PRESETS)
    assert "Horowitz" in presets_module.__doc__ and "ISSCC 2014" in presets_module.__doc__
    assert "assumption" in presets_module.__doc__
    for p in PRESETS.values():
        assert p.e_synop_pj > 0 and p.e_mem_read_pj_per_byte > 0 and p.clock_hz > 0
    assert get_preset("horowitz45_int8").e_synop_pj == pytest.approx(0.1)  # 32-bit int add
    assert get_preset("horowitz45_fp32").e_mac_pj == pytest.approx(3.7 + 0.9)
    with pytest.raises(ValueError, match="known"):
        get_preset("loihi9")
    with pytest.raises(ValueError, match="e_synop_pj"):
        dataclasses.replace(UNIT_PRESET, e_synop_pj=-1.0)
    with pytest.raises(ValueError, match="parallel_synapse_units"):
        UNIT_PRESET.with_overrides(parallel_synapse_units=0)
    with pytest.raises(ValueError, match="e_mac_pj must be a finite number"):
        dataclasses.replace(UNIT_PRESET, e_mac_pj="3.7")
    with pytest.raises(ValueError, match="clock_hz"):
        dataclasses.replace(UNIT_PRESET, clock_hz=None)
    with pytest.raises(ValueError, match="integer weights need weight_bits >= 2"):
        dataclasses.replace(UNIT_PRESET, integer_weights=True, weight_bits=1)


def test_cost_needs_a_time_grid():
    net = _two_layer_net()
    with pytest.raises(ValueError, match="time_bits"):
        estimate_cost(simulate(net, X), net, UNIT_PRESET)


def test_cost_of_another_network_than_the_simulated_one_is_refused():
    """The same layer names with other sizes used to pass and price the ANN of the wrong network."""
    net = _two_layer_net()
    res = simulate(net, X, SimOptions(time_bits=3, time_window=2.0))
    wider = SimNetwork((SimDense(np.ones((5, 4))), SimDense(np.ones((2, 5)))), (4,))
    assert wider.names == net.names
    with pytest.raises(ValueError, match=r"not a simulation of this network.*sizes \[4, 2, 2\] against"):
        estimate_cost(res, wider, UNIT_PRESET)


def test_a_clock_too_slow_for_finite_numbers_is_refused():
    """A positive clock so small that the latency overflows used to give inf energy and NaN power."""
    net = _two_layer_net()
    res = simulate(net, X, SimOptions(time_bits=3, time_window=2.0))
    with pytest.raises(ValueError, match=r"clock \(\S+ Hz\).*not a finite number"):
        estimate_cost(res, net, UNIT_PRESET.with_overrides(clock_hz=1e-320))
    assert estimate_cost(res, net, UNIT_PRESET.with_overrides(clock_hz=1.0)).latency_us == pytest.approx(33e6)


def test_negative_counts_are_refused():
    """A hand-made result with a negative count (as an int64 overflow would give) is not priced."""
    net = _two_layer_net()
    res = simulate(net, X, SimOptions(time_bits=3, time_window=2.0))
    assert res.neuron_updates is not None
    res.neuron_updates = res.neuron_updates - 100
    with pytest.raises(ValueError, match="negative event counts"):
        estimate_cost(res, net, UNIT_PRESET)


def test_cli_cost_end_to_end(tmp_path, capsys):
    ckpt, data = _tiny_checkpoint(tmp_path)
    out = tmp_path / "cost.json"
    rc = cli.main(
        ["cost", str(ckpt), "--dataset", str(data), "--limit", "10", "--preset", "horowitz45_fp32",
         "--clock-hz", "2e6", "--parallel", "4", "--time-bits", "5", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    payload = json.loads(out.read_text())
    rep = payload["report"]
    assert rep["n_images"] == 10 and rep["time_bits"] == 5 and rep["weight_bits"] == 32
    assert rep["preset"]["clock_hz"] == 2e6 and rep["preset"]["parallel_synapse_units"] == 4
    assert rep["e_total_uj"] > 0 and rep["latency_us"] > 0 and rep["ann_macs"] > 0
    assert payload["time_window_calibrated"] is True
    assert "energy per image" in capsys.readouterr().out
    # An integer preset quantises the weights to its width by default.
    rc = cli.main(["cost", str(ckpt), "--dataset", str(data), "--limit", "5", "--backend", "numpy",
                   "--out", str(out)])  # fmt: skip
    payload = json.loads(out.read_text())
    assert rc == 0 and payload["report"]["weight_bits"] == 8
    assert payload["backend"] == "numpy" and "(numpy backend)" in capsys.readouterr().out


def _first_number(cell: str) -> float:
    m = re.match(r"\s*([0-9.]+)\s*(MHz)?", cell)
    assert m, cell
    return float(m.group(1)) * (1e6 if m.group(2) else 1.0)


def test_presets_match_the_table_in_docs_hardware():
    """docs/HARDWARE.md 'Presets' table is the documented value of every preset field; a cell holding only
    a number repeats nothing, a cell with a number gives it. Kills: any preset energy/static/clock/parallel
    number changed (e.g. sram1mb e_mem_read 12.5 -> 1.25, int8 e_neuron_update 0.2 -> 0.1,
    fp32 e_synop 0.9 -> 3.7, int8 e_mac 0.3 -> 3.2, p_static 0.1 -> 1.0)."""
    from relpsp.hw.presets import PRESETS

    text = (Path(__file__).resolve().parents[1] / "docs" / "HARDWARE.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header = next(ln for ln in lines if ln.startswith("| field |"))
    names = re.findall(r"`([a-z0-9_]+)`", header)
    assert names == ["horowitz45_int8", "horowitz45_int8_sram1mb", "horowitz45_fp32"]
    fields = [f.name for f in dataclasses.fields(PRESETS[names[0]]) if f.type in ("float", "int")]
    checked = set()
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        m = re.fullmatch(r"`([a-z_]+)`.*", cells[0])
        if not m or m.group(1) not in fields:
            continue
        field = m.group(1)
        for name, cell in zip(names, cells[1:]):
            assert getattr(PRESETS[name], field) == pytest.approx(_first_number(cell)), (name, field, cell)
        checked.add(field)
    assert checked == {
        "e_synop_pj", "e_mem_read_pj_per_byte", "e_neuron_update_pj", "e_mac_pj", "p_static_mw", "clock_hz",
        "parallel_synapse_units",
    }  # fmt: skip
    weights_row = next(ln for ln in lines if ln.startswith("| weights |"))
    for name, cell in zip(names, [c.strip() for c in weights_row.strip("|").split("|")][1:]):
        p = PRESETS[name]
        if cell == "float32":
            assert (p.weight_bits, p.integer_weights) == (32, False)
        else:
            assert cell == f"{p.weight_bits}-bit fixed point" and p.integer_weights


def test_cli_cost_defaults_to_an_8_bit_grid_and_the_int8_preset(tmp_path, capsys):
    """docs/HARDWARE.md: `relpsp cost ... [--time-bits B (default 8)]` and the preset table's
    `horowitz45_int8` (default); --preset help: "(default: horowitz45_int8)"."""
    from relpsp.hw.presets import DEFAULT_PRESET

    assert DEFAULT_PRESET == "horowitz45_int8"
    ckpt, data = _tiny_checkpoint(tmp_path)
    out = tmp_path / "cost.json"
    assert cli.main(["cost", str(ckpt), "--dataset", str(data), "--limit", "5", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())["report"]
    assert rep["time_bits"] == 8 and rep["weight_bits"] == 8 and rep["preset"]["name"] == "horowitz45_int8"
    assert rep["n_images"] == 5
    # "unless --weight-bits says otherwise"
    argv = ["cost", str(ckpt), "--dataset", str(data), "--limit", "5", "--weight-bits", "4", "--time-bits", "5"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    rep = json.loads(out.read_text())["report"]
    assert rep["weight_bits"] == 4 and rep["time_bits"] == 5


def test_silent_neurons_are_clocked_until_the_cut_off_not_the_end_of_the_window():
    """Clocked updates: 'from the tick of its first input event until it fires (or until the cut-off or the
    end of the window if it never does)'. dt = 0.25 over T = 2; the layer's t_max = 1 is tick 4: the neuron
    (slope 0.1 from t = 0, which would cross at 10) is updated on ticks 0..4, not 0..8."""
    net = SimNetwork((SimDense(np.array([[0.1]]), t_max=1.0),), (1,))
    res = simulate(net, [[1.0]], SimOptions(time_bits=3, time_window=2.0))
    assert res.decision.tolist() == [-1]
    assert res.neuron_updates is not None and res.neuron_updates.tolist() == [[0, 4]]
    cut = simulate(
        SimNetwork((SimDense(np.array([[0.1]])),), (1,)),
        [[1.0]],
        SimOptions(time_bits=3, time_window=2.0, t_cutoff=0.5),
    )
    assert cut.neuron_updates is not None and cut.neuron_updates.tolist() == [[0, 2]]
