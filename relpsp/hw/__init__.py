"""Hardware cost model for ReL-PSP networks: synaptic events, neuron updates, weight traffic, energy,
latency and power on a clocked event-driven accelerator, priced with named presets whose numbers cite
their source (``presets``), and compared with the equivalent ANN's multiply-accumulates (``cost``).

The counts come from the event-driven simulator ``relpsp.sim`` run on a time grid. Model (Zhang et al.,
IEEE TNNLS 2021): ``S_j += w_ji`` on each input spike, ``V_j += S_j * dt`` each tick, one spike at the
first tick with ``V_j >= theta``.
"""

from relpsp.hw.cost import CostReport, LayerCost, ann_macs, estimate_cost
from relpsp.hw.presets import DEFAULT_PRESET, PRESETS, HardwarePreset, get_preset

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "CostReport",
    "HardwarePreset",
    "LayerCost",
    "ann_macs",
    "estimate_cost",
    "get_preset",
]
