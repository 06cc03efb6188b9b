"""Accuracy of trained checkpoints in the event-driven simulator under Gaussian timing noise.

    python -m benchmarks.jitter CKPT [CKPT ...] [--sigmas 0,0.01,0.02,0.05,0.1,0.2] [--seeds 3]
                                [--limit N] [--out FILE.json] [--plot FILE.png]

Every spike, the input's and each spiking layer's, is moved by its own N(0, sigma^2) draw after its layer
has computed it exactly (``relpsp.sim``, ``SimOptions.jitter``; sigma in the network's time unit, the
input window being ``t_in``). For each checkpoint and sigma the test set is simulated with noise seeds
0 .. seeds-1 and the accuracy's mean and standard deviation over them are reported, beside the
noiseless decision margins (the labelled output's lead over the earliest other, ``decision_margin``):
jitter at the output alone cannot change a decision whose margin exceeds it, but jitter in every layer
moves the outputs by more. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import environment, refuse_bad_output_file, write_json


def _plot(rows: list[dict], sigmas: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for row in rows:
        means = [100 * row["accuracy"][f"{s:g}"]["mean"] for s in sigmas]
        sds = [100 * row["accuracy"][f"{s:g}"]["sd"] for s in sigmas]
        ax.errorbar(sigmas, means, yerr=sds, marker="o", capsize=3, label=row["label"])
    ax.set_xscale("symlog", linthresh=min([s for s in sigmas if s > 0], default=0.01))
    ax.set_xlabel("timing noise σ (time unit of the input window)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _sigmas(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--sigmas takes numbers separated by commas, got {text!r}") from None
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise ValueError(f"--sigmas must be finite numbers >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or run folders")
    ap.add_argument("--sigmas", default="0,0.01,0.02,0.05,0.1,0.2")
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds per sigma > 0 (default 3)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    ap.add_argument("--data-dir")
    ap.add_argument("--out")
    ap.add_argument("--plot", help="PNG file: accuracy against sigma, one line per checkpoint")
    args = ap.parse_args(argv)
    try:
        sigmas = _sigmas(args.sigmas)
    except ValueError as e:
        ap.error(str(e))
    if args.seeds < 1:
        ap.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.plot and not args.plot.lower().endswith(".png"):
        ap.error(f"--plot writes a PNG file: give a name ending in .png, not {args.plot}")

    import numpy as np
    import torch

    from relpsp.commands import checkpoint_of
    from relpsp.commands.simulate import checkpoint_data_options
    from relpsp.functional import decision_margin
    from relpsp.sim import SimOptions, load_inputs, network_from_checkpoint, simulate
    from relpsp.train import margin_summary

    paths = [checkpoint_of(c) for c in args.checkpoints]
    for out in (args.out, args.plot):  # refused before the runs, never over a checkpoint being measured
        for path in paths:
            refuse_bad_output_file(ap, out, str(path))
    rows = []
    t0 = time.perf_counter()
    for path in paths:
        net, meta = network_from_checkpoint(path)
        cfg = meta["config"]
        dataset = cfg["data"]["dataset"]
        x, y = load_inputs(dataset, "test", args.data_dir, args.limit, checkpoint_data_options(cfg["data"], dataset))
        clean = simulate(net, x)
        margins = margin_summary(decision_margin(torch.from_numpy(clean.t_out), torch.from_numpy(np.asarray(y))))
        accuracy: dict[str, dict] = {}
        for sigma in sigmas:
            accs = (
                [clean.accuracy(y)]
                if sigma == 0
                else [simulate(net, x, SimOptions(jitter=sigma, jitter_seed=s)).accuracy(y) for s in range(args.seeds)]
            )
            accuracy[f"{sigma:g}"] = {
                "mean": statistics.fmean(accs),
                "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "per_seed": accs,
            }
            print(f"{path}: sigma {sigma:g}: " + ", ".join(f"{100 * a:.2f}" for a in accs), flush=True)
        rows.append(
            {
                "checkpoint": str(path),
                "label": f"{Path(path).parent.name} (τ {cfg['train']['tau']:g})",
                "arch": cfg["model"]["arch"],
                "dataset": dataset,
                "tau": cfg["train"]["tau"],
                "n_images": len(y),
                "margins": margins,
                "accuracy": accuracy,
            }
        )
    env = environment()
    print("environment:", json.dumps(env))
    print(f"\ntest accuracy (%) under timing noise σ, mean ± sd over {args.seeds} noise seeds")
    print("| checkpoint | τ | median margin | " + " | ".join(f"σ {s:g}" for s in sigmas) + " |")
    print("|---" * (len(sigmas) + 3) + "|")
    for row in rows:
        med = row["margins"]["quantiles"]["50%"]
        cells = [row["accuracy"][f"{s:g}"] for s in sigmas]
        text = " | ".join(f"{100 * c['mean']:.2f} ± {100 * c['sd']:.2f}" for c in cells)
        median = "-" if med is None else f"{med:.3g}"
        print(f"| {row['label']} | {row['tau']:g} | {median} | {text} |")
    if args.out:  # the numbers first: a failing figure loses nothing
        write_json(
            args.out,
            {
                "benchmark": "jitter",
                "environment": env,
                "sigmas": sigmas,
                "seeds": args.seeds,
                "rows": rows,
                "seconds": time.perf_counter() - t0,
            },
        )
    if args.plot:
        _plot(rows, sigmas, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
