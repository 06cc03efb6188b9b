"""Cost model of an event-driven, clocked ReL-PSP accelerator, from the spikes of ``relpsp.sim``.

The neuron (Zhang et al., IEEE TNNLS 2021) as a clocked circuit (model.md section 5):

    S_j[n] = sum of w_ji over the inputs that have spiked by tick n        (one add per synaptic event)
    V_j[n + 1] = V_j[n] + S_j[n] * dt,   spike at the first n with V_j[n] >= theta   (one update per tick)

Counts per image (from ``simulate`` with a time grid, ``time_bits``):

- synaptic events: every spike times its fan-out (``N_out`` for a dense layer; for a convolution,
  ``C_out`` times the number of output positions whose receptive field holds it). Each costs one weight
  read (``weight_bits / 8`` bytes) and one add. Every spike is delivered, even to neurons that have
  already fired (the sender does not know).
- neuron updates: a neuron is updated every tick from the tick of its first input event until it fires,
  or until the last tick the cut-off allows if it never fires.
- pooling (earliest spike wins) and flattening are routing: no energy is charged for them.

Energy per image (pJ):

    E = syn_events * e_synop + weight_bytes * e_mem_read_per_byte + neuron_updates * e_neuron_update
        + p_static * latency

Latency per image: the clock steps through every tick of the window (at least one cycle each) and
``parallel_synapse_units`` units share the work:

    cycles = n_ticks + ceil((syn_events + neuron_updates) / parallel_synapse_units),  latency = cycles / clock

Windowed networks (``relpsp.window``; ``relpsp.sim`` simulates them) are costed with the same counts. Their
neurons all fire, once each, so every layer sends one spike per neuron; the falling threshold is one
counter per layer and the forced spikes at a window's end are not charged.

Average power = mean energy / mean latency (images processed back to back). Activation (spike) traffic,
routing between cores and off-chip memory are not modelled.

The equivalent ANN (same weights, one multiply-accumulate per connection, padding taps included, pooling
free) is costed with the same memory assumption: one weight read per MAC, no reuse:

    E_ann = macs * (e_mac + weight_bytes_per_weight * e_mem_read_per_byte)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from relpsp.hw.presets import HardwarePreset
from relpsp.sim import SimConv, SimDense, SimNetwork, SimResult

__all__ = ["CostReport", "LayerCost", "ann_macs", "estimate_cost"]


def ann_macs(net: SimNetwork) -> list[int]:
    """Multiply-accumulates per image of the equivalent ANN, per column of ``net.names`` (0 for the
    input, pooling and flattening)."""
    macs = [0]
    for layer, shape_out in zip(net.layers, net.shapes[1:]):
        if isinstance(layer, SimDense):
            macs.append(int(layer.weight.shape[0] * layer.weight.shape[1]))
        elif isinstance(layer, SimConv):
            _c_out, c_in, k, _k = layer.weight.shape
            macs.append(int(math.prod(shape_out) * c_in * k * k))
        else:
            macs.append(0)
    return macs


@dataclass(frozen=True)
class LayerCost:
    """Means per image for one layer."""

    name: str
    n_neurons: int
    spikes_in: float
    spikes_out: float
    syn_events: float
    neuron_updates: float
    weight_bytes_read: float
    ann_macs: int


@dataclass(frozen=True)
class CostReport:
    """Per-image means (energies in uJ, latency in us, power in mW) for ``preset`` on ``n_images``.
    ``spikes`` counts the input spikes and those the dense and convolutional neurons emit; the per-layer
    ``spikes_out`` of a pooling or flattening layer are spikes passed on, not counted again."""

    preset: HardwarePreset
    n_images: int
    weight_bits: int
    time_bits: int
    n_ticks: int
    dt: float
    layers: tuple[LayerCost, ...]
    spikes: float
    syn_events: float
    neuron_updates: float
    weight_bytes_read: float
    active_neurons_per_tick: float
    e_synop_uj: float
    e_mem_uj: float
    e_neuron_uj: float
    e_static_uj: float
    e_total_uj: float
    latency_us: float
    latency_us_max: float
    p_avg_mw: float
    ann_macs: int
    e_ann_uj: float
    accuracy: float | None = None
    no_decision_rate: float | None = None
    tied_decision_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        return d

    def table(self) -> str:
        """A plain-text table: per-layer counts, then the totals and the estimates."""
        lines = [
            f"preset {self.preset.name}: {self.preset.description}",
            f"{self.n_images} images, weights {self.weight_bits} bit, time grid {self.time_bits} bit "
            f"({self.n_ticks} ticks of {self.dt:.4g}), clock {self.preset.clock_hz:.4g} Hz, "
            f"{self.preset.parallel_synapse_units} synapse unit(s)",
            f"{'layer':<10}{'neurons':>9}{'spikes in':>12}{'spikes out':>12}{'syn events':>13}{'updates':>12}"
            f"{'weight B':>12}{'ANN MACs':>12}",
        ]
        for lc in self.layers:
            lines.append(
                f"{lc.name:<10}{lc.n_neurons:>9}{lc.spikes_in:>12.1f}{lc.spikes_out:>12.1f}{lc.syn_events:>13.1f}"
                f"{lc.neuron_updates:>12.1f}{lc.weight_bytes_read:>12.1f}{lc.ann_macs:>12}"
            )
        lines += [
            f"per image: {self.spikes:.1f} spikes, {self.syn_events:.4g} synaptic events, "
            f"{self.neuron_updates:.4g} neuron updates ({self.active_neurons_per_tick:.4g} active per tick), "
            f"{self.weight_bytes_read:.4g} weight bytes",
            f"energy per image: {self.e_total_uj:.4g} uJ (synops {self.e_synop_uj:.4g}, memory {self.e_mem_uj:.4g}, "
            f"neuron updates {self.e_neuron_uj:.4g}, static {self.e_static_uj:.4g})",
            f"latency per image: {self.latency_us:.4g} us (max {self.latency_us_max:.4g}); "
            f"average power {self.p_avg_mw:.4g} mW",
            f"equivalent ANN: {self.ann_macs} MACs, {self.e_ann_uj:.4g} uJ per image "
            f"(SNN/ANN dynamic energy {self._ratio():.3g})",
        ]
        if self.accuracy is not None:
            lines.append(
                f"accuracy {self.accuracy:.4f}, no decision {self.no_decision_rate:.4f}, "
                f"tied decision {self.tied_decision_rate:.4f} (ties go to the lowest class index)"
            )
        return "\n".join(lines)

    def _ratio(self) -> float:
        dyn = self.e_total_uj - self.e_static_uj
        return dyn / self.e_ann_uj if self.e_ann_uj > 0 else math.nan


def estimate_cost(
    result: SimResult, net: SimNetwork, preset: HardwarePreset, *, labels: Any | None = None
) -> CostReport:
    """Counts of ``result`` (``simulate`` of ``net`` with ``time_bits``) priced with ``preset``.

    The weight width is the simulation's ``weight_bits`` when it quantised the weights, else the
    preset's. ``labels`` (optional, ``[B]``) adds the accuracy of the simulated (quantised) network.
    """
    if result.neuron_updates is None or result.grid is None:
        raise ValueError("the cost model needs a clocked simulation: run simulate with time_bits set")
    net_sizes = tuple(math.prod(s) for s in net.shapes)
    if tuple(result.layer_names) != net.names or tuple(result.n_neurons) != net_sizes:
        raise ValueError(
            f"the result is not a simulation of this network: layers {list(result.layer_names)} of sizes "
            f"{list(result.n_neurons)} against {list(net.names)} of sizes {list(net_sizes)}"
        )
    n = result.n_images
    if n == 0:
        raise ValueError("the cost model needs at least one simulated image")
    if (result.syn_events < 0).any() or (result.neuron_updates < 0).any():
        raise ValueError("the result holds negative event counts; it is not a simulation's")
    weight_bits = result.options.weight_bits or preset.weight_bits
    bytes_per_weight = weight_bits / 8.0
    macs = ann_macs(net)
    syn = result.syn_events.astype(np.float64)
    upd = result.neuron_updates.astype(np.float64)
    layers = tuple(
        LayerCost(
            name=name,
            n_neurons=int(result.n_neurons[i]),
            spikes_in=float(result.spikes_in[:, i].mean()),
            spikes_out=float(result.spikes_out[:, i].mean()),
            syn_events=float(syn[:, i].mean()),
            neuron_updates=float(upd[:, i].mean()),
            weight_bytes_read=float(syn[:, i].mean() * bytes_per_weight),
            ann_macs=int(macs[i]),
        )
        for i, name in enumerate(result.layer_names)
    )
    # spikes that exist: the input's and those the neurons emit (pooling and flattening pass them on)
    spike_cols = [0, *(i + 1 for i in net.spiking_layers())]
    syn_img = syn.sum(1)
    upd_img = upd.sum(1)
    bytes_img = syn_img * bytes_per_weight
    n_ticks = result.grid.n_ticks
    cycles = n_ticks + np.ceil((syn_img + upd_img) / preset.parallel_synapse_units)
    with np.errstate(over="ignore", invalid="ignore"):  # an absurd preset is refused below, by name
        latency_s = cycles / preset.clock_hz
        e_syn_pj = syn_img * preset.e_synop_pj
        e_mem_pj = bytes_img * preset.e_mem_read_pj_per_byte
        e_upd_pj = upd_img * preset.e_neuron_update_pj
        e_static_pj = preset.p_static_mw * 1e-3 * latency_s * 1e12
        e_total_pj = e_syn_pj + e_mem_pj + e_upd_pj + e_static_pj
    total_macs = int(sum(macs))
    e_ann_pj = total_macs * (preset.e_mac_pj + bytes_per_weight * preset.e_mem_read_pj_per_byte)
    if not (np.isfinite(latency_s).all() and np.isfinite(e_total_pj).all()):
        raise ValueError(
            f"the preset's clock ({preset.clock_hz:g} Hz) and energies (static power {preset.p_static_mw:g} "
            "mW) give a latency or energy per image that is not a finite number"
        )
    mean_latency_s = float(latency_s.mean())
    accuracy = no_decision = tied = None
    if labels is not None:
        accuracy = result.accuracy(labels)
        no_decision = result.no_decision_rate()
        tied = result.tied_decision_rate()
    return CostReport(
        preset=preset,
        n_images=n,
        weight_bits=int(weight_bits),
        time_bits=int(result.grid.bits),
        n_ticks=int(n_ticks),
        dt=float(result.grid.dt),
        layers=layers,
        spikes=float(result.spikes_out[:, spike_cols].sum(1).mean()),
        syn_events=float(syn_img.mean()),
        neuron_updates=float(upd_img.mean()),
        weight_bytes_read=float(bytes_img.mean()),
        active_neurons_per_tick=float(upd_img.mean() / n_ticks),
        e_synop_uj=float(e_syn_pj.mean() * 1e-6),
        e_mem_uj=float(e_mem_pj.mean() * 1e-6),
        e_neuron_uj=float(e_upd_pj.mean() * 1e-6),
        e_static_uj=float(e_static_pj.mean() * 1e-6),
        e_total_uj=float(e_total_pj.mean() * 1e-6),
        latency_us=mean_latency_s * 1e6,
        latency_us_max=float(latency_s.max() * 1e6),
        p_avg_mw=float(e_total_pj.mean() * 1e-12 / mean_latency_s * 1e3),
        ann_macs=total_macs,
        e_ann_uj=float(e_ann_pj * 1e-6),
        accuracy=accuracy,
        no_decision_rate=no_decision,
        tied_decision_rate=tied,
    )
