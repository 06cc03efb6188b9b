"""Event-driven float64 inference of ReL-PSP networks (and of the windowed neuron of ``relpsp.window``),
written independently of the training code.

It imports only NumPy, the standard library and ``relpsp.arch``/``relpsp.checkpoint``/``relpsp.config``/
``relpsp.data`` (numba optionally, lazily), so that it is a second implementation against which the
trained torch model can be checked. Neuron (Zhang et al., IEEE TNNLS 2021):
``V_j(t) = sum_i w_ji * max(0, t - t_i)``, one spike at the first t with ``V_j(t) >= theta``.

- ``network``: the simulator's layer list (``SimNetwork``), from a checkpoint or built by hand;
- ``engine``: ``simulate`` (spike times, decisions, per-layer counts for ``relpsp.hw``);
- ``quant``: fixed-point weights and the clocked time grid;
- ``inputs``: datasets for the commands (``relpsp.data`` or an ``.npz`` file).
"""

from relpsp.sim.engine import (
    BACKENDS,
    SimOptions,
    SimResult,
    as_network_images,
    backend_that_runs,
    calibrate_time_window,
    concat_results,
    conv_reach,
    fire_rows,
    latency_encode_np,
    resolve_backend,
    resolve_time_window,
    run_layer,
    simulate,
    window_fire_rows,
)
from relpsp.sim.inputs import inputs_from_arrays, is_inputs_file, is_split_archive, load_inputs
from relpsp.sim.network import (
    SimConv,
    SimDense,
    SimFlatten,
    SimLayer,
    SimNetwork,
    SimPool,
    layer_output_shape,
    network_from_arrays,
    network_from_checkpoint,
    standardized_rows,
)
from relpsp.sim.quant import TimeGrid, quantize_weight

__all__ = [
    "BACKENDS",
    "SimConv",
    "SimDense",
    "SimFlatten",
    "SimLayer",
    "SimNetwork",
    "SimOptions",
    "SimPool",
    "SimResult",
    "TimeGrid",
    "as_network_images",
    "backend_that_runs",
    "calibrate_time_window",
    "concat_results",
    "conv_reach",
    "fire_rows",
    "inputs_from_arrays",
    "is_inputs_file",
    "is_split_archive",
    "latency_encode_np",
    "layer_output_shape",
    "load_inputs",
    "network_from_arrays",
    "network_from_checkpoint",
    "quantize_weight",
    "resolve_backend",
    "resolve_time_window",
    "run_layer",
    "simulate",
    "standardized_rows",
    "window_fire_rows",
]
