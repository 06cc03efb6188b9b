"""``relpsp cost``: synaptic events, neuron updates, energy, latency and power on a clocked accelerator.

Runs the event-driven simulator on a time grid (``--time-bits``, default 8) with the preset's weight
width (fixed point for integer presets, unless ``--weight-bits`` says otherwise) and prices the counts
with a named preset (``relpsp.hw.presets``); see ``relpsp.hw.cost`` for the model:

    E = syn_events * e_synop + weight_bytes * e_mem_read + neuron_updates * e_neuron_update + P_static * latency
"""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    from relpsp.commands.simulate import add_sim_arguments
    from relpsp.hw.presets import DEFAULT_PRESET, PRESETS

    add_sim_arguments(
        parser,
        default_limit=None,
        default_time_bits=8,
        default_weight_bits="the preset's width for presets with integer weights, else float64",
    )
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help=f"hardware preset (default: {DEFAULT_PRESET})"
    )
    parser.add_argument("--clock-hz", type=float, default=None, help="override the preset's clock")
    parser.add_argument("--parallel", type=int, default=None, help="override the number of parallel synapse units")


def run(args: argparse.Namespace) -> int:
    from relpsp import __version__
    from relpsp.commands.simulate import prepare, write_json
    from relpsp.hw import estimate_cost, get_preset
    from relpsp.sim import backend_that_runs, simulate

    if args.time_bits is None:
        raise ValueError("the cost model needs a clocked time grid: give --time-bits")
    preset = get_preset(args.preset).with_overrides(clock_hz=args.clock_hz, parallel_synapse_units=args.parallel)
    weight_bits = args.weight_bits
    if weight_bits is None and preset.integer_weights:
        weight_bits = preset.weight_bits
    ctx = prepare(args, weight_bits=weight_bits)
    net, x, y, options = ctx["net"], ctx["x"], ctx["y"], ctx["options"]
    t0 = time.perf_counter()
    res = simulate(net, x, options)
    seconds = time.perf_counter() - t0
    report = estimate_cost(res, net, preset, labels=y)
    print(report.table())
    backend = backend_that_runs(net, options)
    print(f"simulated {res.n_images} images in {seconds:.2f} s ({backend} backend)")
    if args.out:
        payload: dict[str, Any] = {
            "version": __version__,
            "source": str(args.source),
            "dataset": ctx["dataset"],
            "split": args.split,
            "arch": net.arch,
            "time_window": res.grid.window if res.grid is not None else None,
            "time_window_calibrated": ctx["window_rule"] is not None,
            "window_rule": ctx["window_rule"],
            "t_cutoff": options.t_cutoff,
            "backend": backend,
            "report": report.to_dict(),
        }
        if ctx["meta"] is not None:
            payload["config"] = ctx["meta"].get("config")
        write_json(args.out, payload)
    return 0
