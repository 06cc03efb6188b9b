"""Accuracy of a trained checkpoint in the event-driven simulator against weight and time precision.

    python -m benchmarks.quantization CKPT [--bits 4,6,8,10,12,16] [--limit N] [--out FILE.json]

For every weight width W and time width T in ``--bits`` (plus float64 weights / continuous time, "fp"),
the whole grid W x T is simulated: fixed-point weights (symmetric, per layer) and every spike time
rounded up to a grid of 2^T steps over [0, T_window]; spikes after T_window are dropped. T_window is
calibrated on the first 1000 test images and recorded (``relpsp.sim.calibrate_time_window``):
``--window decision`` (default) calibrates each cell as ``relpsp simulate`` does, from the latest
decision time (first output spike) in continuous time, widened until that cell's grid decides every
calibration image the continuous run decides (a clocked chip can stop at the first output spike, and no
later spike can change the decision); ``--window decision-fixed`` uses the unwidened latest decision time
for every cell (the rule before 3 December 2026); ``--window spikes`` the 99.9th percentile of all spike
times. Prints a markdown table (rows: weight bits, columns: time bits) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import environment, refuse_bad_output_file, write_json


def _plot(grid: dict[str, dict[str, float]], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = [k for k in grid if k != "fp"]
    xs = [int(b) for b in bits]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(xs, [100 * grid[b]["fp"] for b in bits], "o-", label="weight bits (continuous time)")
    ax.plot(xs, [100 * grid["fp"][b] for b in bits], "s-", label="time bits (float64 weights)")
    ax.plot(xs, [100 * grid[b][b] for b in bits], "^-", label="both (same bits)")
    ax.axhline(100 * grid["fp"]["fp"], color="gray", ls="--", label="full precision")
    ax.set_xlabel("bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--bits", default="4,6,8,10,12,16")
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    ap.add_argument("--data-dir")
    ap.add_argument("--window", choices=("decision", "decision-fixed", "spikes"), default="decision")
    ap.add_argument("--out")
    ap.add_argument("--plot", help="PNG file: accuracy against weight bits and time bits")
    args = ap.parse_args(argv)
    for out in (args.out, args.plot):  # refused before the runs, never over the checkpoint being measured
        refuse_bad_output_file(ap, out, args.checkpoint)
    if args.out and args.plot and Path(args.out).resolve() == Path(args.plot).resolve():
        ap.error(f"--out and --plot name the same file {args.out}")
    if args.plot and not args.plot.lower().endswith(".png"):
        ap.error(f"--plot writes a PNG file: give a name ending in .png, not {args.plot}")

    from relpsp.commands.simulate import checkpoint_data_options
    from relpsp.sim import SimOptions, calibrate_time_window, load_inputs, network_from_checkpoint, simulate

    net, meta = network_from_checkpoint(args.checkpoint)
    dataset = meta["config"]["data"]["dataset"]
    x, y = load_inputs(
        dataset, "test", args.data_dir, args.limit, checkpoint_data_options(meta["config"]["data"], dataset)
    )
    rule = "spikes" if args.window == "spikes" else "decision"
    window = calibrate_time_window(net, x[:1000], rule=rule)  # continuous time: no widening
    bits: list[int | None] = [None] + [int(b) for b in args.bits.split(",")]
    grid: dict[str, dict[str, float]] = {}
    windows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    for wb in bits:
        wkey = "fp" if wb is None else str(wb)
        row, row_windows = grid.setdefault(wkey, {}), windows.setdefault(wkey, {})
        for tb in bits:
            cell = window
            if args.window == "decision" and tb is not None:
                cell = calibrate_time_window(net, x[:1000], SimOptions(weight_bits=wb, time_bits=tb))
            opts = SimOptions(weight_bits=wb, time_bits=tb, time_window=cell)
            tkey = "fp" if tb is None else str(tb)
            row[tkey], row_windows[tkey] = simulate(net, x, opts).accuracy(y), cell
        print(
            f"weight bits {'fp' if wb is None else wb}: " + "  ".join(f"{k}:{100 * v:.2f}" for k, v in row.items()),
            flush=True,
        )
    base = grid["fp"]["fp"]
    cols = list(grid["fp"])
    print("environment:", json.dumps(environment()))
    print(
        f"\n{meta['config']['model']['arch']} on {dataset} test ({len(y)} images), T_window = {window:.4g} "
        f"({args.window}; per cell in the JSON); "
        "accuracy (%) by weight bits (rows) and time bits (columns); fp = float64 / continuous"
    )
    print("| weight \\ time | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for wkey, row in grid.items():
        print(f"| {wkey} | " + " | ".join(f"{100 * row[c]:.2f}" for c in cols) + " |")
    if "8" in grid:
        print(
            f"\n8-bit weights, 8-bit time: {100 * grid['8']['8']:.2f}% vs {100 * base:.2f}% full precision "
            f"(loss {100 * (base - grid['8']['8']):.2f} points)"
        )
    if args.out:  # the numbers first: a failing figure loses nothing
        write_json(
            args.out,
            {
                "benchmark": "quantization",
                "environment": environment(),
                "checkpoint": args.checkpoint,
                "arch": meta["config"]["model"]["arch"],
                "dataset": dataset,
                "n_images": len(y),
                "time_window": window,
                "time_windows": windows,
                "window_rule": args.window,
                "accuracy": grid,
                "seconds": time.perf_counter() - t0,
            },
        )
    if args.plot:
        _plot(grid, f"{meta['config']['model']['arch']} ({len(y)} {dataset} test images)", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
