"""Count how often a float32 output spike time rounds onto one of its own input times.

The exact spike lies strictly after its last causal input; when the rounded closed form lands on that
input's time, the forward returns the next float above it instead (docs/ROBUSTNESS.md), so that the
backward's causal set ``t_i < t_out`` keeps the input. This measures how common that is for a 784-800
layer at its default initialisation on MNIST-like sparse inputs (synthetic: a fraction of pixels lit,
intensities in steps of 1/255): the spikes exactly one float above an input time (the moved ones, and any
that lie there by chance) and the spikes at exactly an input time (a crossing at the next input's
arrival, which is not causal).

    python scripts/causal_rounding_count.py [--images 256] [--dark 0.8] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch

from relpsp.functional import latency_encode, relpsp_linear


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--dark", type=float, default=0.8, help="fraction of pixels set to 0 (they never fire)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.images < 1 or not 0 <= args.dark < 1:
        ap.error("--images must be >= 1 and --dark in [0, 1)")
    torch.manual_seed(args.seed)
    n_in, n_out = 784, 800
    x = torch.rand(args.images, n_in)
    x[torch.rand(args.images, n_in) < args.dark] = 0
    t_in = latency_encode((x * 255).round() / 255)
    weight = torch.randn(n_out, n_in) / math.sqrt(n_in) + 5.0 / n_in  # the library's default init
    t_out = relpsp_linear(t_in, weight)
    fired = torch.isfinite(t_out)
    on_input = (t_in.unsqueeze(1) == t_out.unsqueeze(2)).any(2) & fired
    above = torch.nextafter(t_in, torch.full_like(t_in, math.inf))
    just_above = (above.unsqueeze(1) == t_out.unsqueeze(2)).any(2) & fired
    print(
        f"{args.images} images, 784-800 float32: {int(fired.sum())} output spikes, "
        f"{int(just_above.sum())} one float above one of their input times, "
        f"{int(on_input.sum())} at exactly one of their input times"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
