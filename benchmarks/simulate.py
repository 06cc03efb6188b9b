"""Throughput of the event-driven simulator (``relpsp.sim``) per backend, on freshly initialised networks.

    python -m benchmarks.simulate [--archs ...] [--images 2000] [--backends numba,numpy] [--seed 0]
                                  [--threads N] [--kernel relpsp|window] [--out FILE.json]

For each architecture a network is built with the default initialisation (weights ~ N(5θ/fan_in,
(θ/√fan_in)²), so nearly every neuron fires: a heavy case for an event-driven simulator, heavier than a
trained network) from ``--seed``, and ``--images`` MNIST test images (synthetic digit-like images where
MNIST is not in the data folder) are run through it in continuous float64 time, once per backend, after
a warm-up on 8 images (which also compiles the numba kernels). Printed and stored: the device, versions
and thread counts, then per (architecture, backend) the wall time, images/s and spikes per image, and
whether the backends made the same decisions. ``--kernel window``: the windowed neuron with the settings of
``benchmarks.common.WINDOW_CONFIG`` (standardised weights at their initial gains; every neuron fires),
whose layers are NumPy matrix products: it runs once, as backend ``numpy``, whatever ``--backends`` says.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import environment, mnist_like_batch, refuse_bad_output_file, window_model_config, write_json
from relpsp.config import Config, ModelConfig, config_to_dict
from relpsp.models import model_arrays, model_from_config
from relpsp.sim import SimOptions, network_from_arrays, simulate

ARCHS = ("784-800-10", "16C5-P2-32C5-P2-800-128-10")


def fresh_network(arch: str, seed: int, kernel: str = "relpsp"):
    """A simulator network with the training code's default initialisation for ``arch`` (MNIST input);
    ``kernel="window"``: the windowed neuron of ``WINDOW_CONFIG``."""
    torch.manual_seed(seed)
    if kernel == "window":
        cfg = window_model_config(arch, (1, 28, 28))
    else:
        cfg = ModelConfig(arch=arch, input_shape=(1, 28, 28))
    # the checkpoint's layout: the weights as the trainer saves them, the [model] section as a dict
    return network_from_arrays(model_arrays(model_from_config(cfg)), config_to_dict(Config(model=cfg))["model"])


def run_case(arch: str, images: np.ndarray, backend: str, seed: int, kernel: str = "relpsp") -> dict:
    net = fresh_network(arch, seed, kernel)
    options = SimOptions(backend=backend)
    simulate(net, images[:8], options)  # warm-up (numba compiles here)
    t0 = time.perf_counter()
    res = simulate(net, images, options)
    seconds = time.perf_counter() - t0
    return {
        "arch": arch,
        "kernel": kernel,
        "backend": backend,
        "images": len(images),
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "spikes_per_image": float(np.sum(res.spikes_out) / len(images)),
        "decisions": res.decision.tolist(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--backends", default="numba,numpy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="numba threads (0: numba's default)")
    ap.add_argument("--data-dir")
    ap.add_argument("--kernel", choices=("relpsp", "window"), default="relpsp", help="the neuron (default: relpsp)")
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args(argv)
    refuse_bad_output_file(ap, args.out)
    if args.images < 1:
        ap.error("--images must be >= 1")
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
    x, source = mnist_like_batch(args.images, seed=args.seed, data_dir=args.data_dir)
    images = x.double().numpy()
    env = environment("cpu")
    print(env)
    print(f"{args.images} images: {source}")
    rows = []
    backends = ["numpy"] if args.kernel == "window" else args.backends.split(",")
    for arch in args.archs.split(","):
        decisions = {}
        for backend in backends:
            row = run_case(arch, images, backend, args.seed, args.kernel)
            decisions[backend] = row.pop("decisions")
            rows.append(row)
            print(
                f"{arch:28s} {backend:6s} {row['seconds']:8.2f} s  {row['images_per_s']:8.1f} images/s"
                f"  {row['spikes_per_image']:10.1f} spikes/image"
            )
        if len(decisions) > 1:
            first = next(iter(decisions.values()))
            same = all(d == first for d in decisions.values())
            print(f"{arch}: backends make the same decisions: {same}")
            for row in rows:
                if row["arch"] == arch:
                    row["same_decisions_across_backends"] = same
    result = {"environment": env, "images": args.images, "source": source, "seed": args.seed, "rows": rows}
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
