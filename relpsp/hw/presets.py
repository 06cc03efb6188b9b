"""Named hardware presets for the cost model: energy per operation, memory, clock, parallelism.

Every number is either **cited** (with its source) or an **assumption** (said so, with the reason).
The operation energies come from one table:

    M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, pp. 10-14,
    45 nm, 0.9 V: 8-bit int add 0.03 pJ, 32-bit int add 0.1 pJ, 32-bit int mult 3.1 pJ,
    32-bit float add 0.9 pJ, 32-bit float mult 3.7 pJ; 64-bit cache/SRAM access about 10 pJ from an
    8 KB array (about 5 pJ per 32-bit word).

Two further entries of the same table are used as recalled, not re-checked against the slide: 8-bit int
mult 0.2 pJ, and about 100 pJ per 64-bit access of a 1 MB SRAM. Static power, clock and the number of
parallel synapse units describe no real chip: they are assumptions, to be overridden (``relpsp cost
--clock-hz --parallel``) when a target is known. The accelerator of the ReL-PSP paper (0.751 mW,
47.71 ms per MNIST image) is not described in enough detail to be a preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["DEFAULT_PRESET", "PRESETS", "HardwarePreset", "get_preset"]


@dataclass(frozen=True)
class HardwarePreset:
    """Costs of one event-driven, clocked ReL-PSP accelerator.

    - ``e_synop_pj``: one synaptic event, adding a weight to the target neuron's slope register S;
    - ``e_mem_read_pj_per_byte``: reading weight memory, per byte (one weight per synaptic event);
    - ``e_neuron_update_pj``: one clocked neuron update, ``V += S`` and the compare with theta;
    - ``e_mac_pj``: one multiply-accumulate of the equivalent ANN (for the comparison only);
    - ``p_static_mw``: static (leakage) power while an image is processed;
    - ``clock_hz``: clock of the synapse units; ``parallel_synapse_units``: operations per clock cycle;
    - ``weight_bits``: stored width of a weight; ``integer_weights``: fixed point (True) or float.
    """

    name: str
    e_synop_pj: float
    e_mem_read_pj_per_byte: float
    e_neuron_update_pj: float
    e_mac_pj: float
    p_static_mw: float
    clock_hz: float
    parallel_synapse_units: int
    weight_bits: int
    integer_weights: bool
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("e_synop_pj", "e_mem_read_pj_per_byte", "e_neuron_update_pj", "e_mac_pj", "p_static_mw"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"preset {self.name!r}: {name} must be a finite number >= 0, got {v!r}")
        if (
            isinstance(self.clock_hz, bool)
            or not isinstance(self.clock_hz, (int, float))
            or not (math.isfinite(self.clock_hz) and self.clock_hz > 0)
        ):
            raise ValueError(f"preset {self.name!r}: clock_hz must be a finite positive number, got {self.clock_hz!r}")
        if isinstance(self.parallel_synapse_units, bool) or not isinstance(self.parallel_synapse_units, int):
            raise ValueError(f"preset {self.name!r}: parallel_synapse_units must be an integer")
        if self.parallel_synapse_units < 1:
            raise ValueError(
                f"preset {self.name!r}: parallel_synapse_units must be >= 1, got {self.parallel_synapse_units}"
            )
        if isinstance(self.weight_bits, bool) or not isinstance(self.weight_bits, int) or self.weight_bits < 1:
            raise ValueError(f"preset {self.name!r}: weight_bits must be a positive integer, got {self.weight_bits!r}")
        if self.integer_weights and self.weight_bits < 2:
            raise ValueError(
                f"preset {self.name!r}: integer weights need weight_bits >= 2 (a sign and one magnitude bit), "
                f"got {self.weight_bits}"
            )

    def with_overrides(
        self, clock_hz: float | None = None, parallel_synapse_units: int | None = None
    ) -> HardwarePreset:
        """A copy with the clock and/or the parallelism replaced (None keeps the preset's value)."""
        changes: dict[str, Any] = {}
        if clock_hz is not None:
            changes["clock_hz"] = float(clock_hz)
        if parallel_synapse_units is not None:
            changes["parallel_synapse_units"] = parallel_synapse_units
        return replace(self, **changes) if changes else self


# Shared assumptions of the presets below (not from any source):
_P_STATIC_MW = 0.1  # leakage of a small SRAM-based core; an order of magnitude, no source
_CLOCK_HZ = 100e6  # a modest clock for a low-power 45 nm design
_PARALLEL = 1  # one synapse unit: a minimal, fully serial event-driven core

HORO45_INT8 = HardwarePreset(
    name="horowitz45_int8",
    # cited: 32-bit int add 0.1 pJ (the slope and potential registers need more than 8 bits)
    e_synop_pj=0.1,
    # cited: ~10 pJ per 64-bit access of an 8 KB SRAM -> 1.25 pJ per byte. Optimistic for MNIST-size
    # networks, whose weights do not fit in 8 KB (see horowitz45_int8_sram1mb).
    e_mem_read_pj_per_byte=10.0 / 8,
    # cited: one 32-bit int add (V += S); assumption: the compare with theta costs another add
    e_neuron_update_pj=0.1 + 0.1,
    # recalled from the same table: 8-bit int mult 0.2 pJ; cited: 32-bit int add 0.1 pJ
    e_mac_pj=0.2 + 0.1,
    p_static_mw=_P_STATIC_MW,
    clock_hz=_CLOCK_HZ,
    parallel_synapse_units=_PARALLEL,
    weight_bits=8,
    integer_weights=True,
    description="45 nm (Horowitz, ISSCC 2014): 8-bit fixed-point weights in an 8 KB SRAM, 32-bit integer accumulators",
)

HORO45_INT8_SRAM1MB = replace(
    HORO45_INT8,
    name="horowitz45_int8_sram1mb",
    # recalled from the same table: ~100 pJ per 64-bit access of a 1 MB SRAM -> 12.5 pJ per byte;
    # 784-800-10 holds about 636 K weights, 636 KB in 8 bits.
    e_mem_read_pj_per_byte=100.0 / 8,
    description="as horowitz45_int8, with the weights in a 1 MB SRAM (large enough for the MNIST networks)",
)

HORO45_FP32 = HardwarePreset(
    name="horowitz45_fp32",
    # cited: 32-bit float add 0.9 pJ
    e_synop_pj=0.9,
    # cited: ~5 pJ per 32-bit word from an 8 KB SRAM -> 1.25 pJ per byte
    e_mem_read_pj_per_byte=10.0 / 8,
    # cited: 32-bit float add (V += S); assumption: the compare costs another float add
    e_neuron_update_pj=0.9 + 0.9,
    # cited: 32-bit float mult 3.7 pJ + 32-bit float add 0.9 pJ
    e_mac_pj=3.7 + 0.9,
    p_static_mw=_P_STATIC_MW,
    clock_hz=_CLOCK_HZ,
    parallel_synapse_units=_PARALLEL,
    weight_bits=32,
    integer_weights=False,
    description="45 nm (Horowitz, ISSCC 2014): float32 weights in an 8 KB SRAM, float32 accumulators",
)

#: name -> preset
PRESETS: dict[str, HardwarePreset] = {p.name: p for p in (HORO45_INT8, HORO45_INT8_SRAM1MB, HORO45_FP32)}
DEFAULT_PRESET = HORO45_INT8.name


def get_preset(name: str) -> HardwarePreset:
    """The preset called ``name``; ``ValueError`` lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown hardware preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
