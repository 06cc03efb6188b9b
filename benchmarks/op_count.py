"""Work and memory a training step of the exact model must do, per architecture (no timing).

    python -m benchmarks.op_count [--archs ...] [--batch 256] [--active 0.19] [--out FILE.json]

Counts, per sample, the synapses of every weight layer (output positions x output channels x fan-in) and
turns them into the operations of the kernels in ``relpsp.kernels``:

- forward event walk: at most one add and one fused multiply-add per (causal input, neuron), 3 FLOP;
  the walk stops at the crossing, so with a fraction ``a`` of inputs active it does at most ``a`` of it;
- backward, dL/dw: compare, subtract, multiply-add per synapse, 4 FLOP (dense over inputs, as written);
- backward, dL/dt_in (not for the first layer, whose input needs no gradient): compare and multiply-add,
  3 FLOP.

FLOP per sample times a target rate gives the arithmetic throughput the target needs, to set beside the
GPU's FP32 CUDA-core peak (the masks keep these contractions off the tensor cores). Bytes: im2col patches
of the largest layer at the batch size (the biggest transient buffer) and Adam's traffic per step
(parameter, gradient and two moments read, three written, float32).
"""

from __future__ import annotations

import argparse

from benchmarks.common import environment, refuse_bad_output_file, write_json
from relpsp.arch import ConvSpec, DenseSpec, EncodeSpec, parse_arch

ARCHS = {
    "784-800-10": (1, 28, 28),
    "16C5-P2-32C5-P2-800-128-10": (1, 28, 28),
    "64C3p1-128C3p1-P2-256C3p1-256C3p1-P2-512C3p1-512C3p1-P2-10": (3, 32, 32),
}
TARGETS = {"784-800-10": 1_000_000, "16C5-P2-32C5-P2-800-128-10": 200_000}
VGG_TARGET = 12_400
FWD_FLOP, GW_FLOP, GIN_FLOP = 3, 4, 3


def count(arch: str, shape: tuple[int, ...], batch: int, active: float) -> dict:
    layers = []
    first = True
    for spec in parse_arch(arch, shape):
        if isinstance(spec, EncodeSpec):
            continue
        if isinstance(spec, DenseSpec):
            positions, c_out, fan_in = 1, spec.n_out, spec.n_in
        elif isinstance(spec, ConvSpec):
            positions, c_out, fan_in = spec.out_hw[0] * spec.out_hw[1], spec.c_out, spec.c_in * spec.kernel**2
        else:
            continue
        syn = positions * c_out * fan_in
        flop = syn * (FWD_FLOP * active + GW_FLOP + (0 if first else GIN_FLOP))
        layers.append(
            {
                "rows_per_sample": positions,
                "fan_in": fan_in,
                "outputs": c_out,
                "synapses_per_sample": syn,
                "flop_per_sample": flop,
                "patch_bytes_at_batch": batch * positions * fan_in * 4,
                "weights": c_out * fan_in,
            }
        )
        first = False
    n_weights = sum(x["weights"] for x in layers)
    total_flop = sum(x["flop_per_sample"] for x in layers)
    return {
        "arch": arch,
        "layers": layers,
        "synapses_per_sample": sum(x["synapses_per_sample"] for x in layers),
        "flop_per_sample": total_flop,
        "weights": n_weights,
        "adam_bytes_per_step": 7 * 4 * n_weights,
        "largest_patch_buffer_bytes": max(x["patch_bytes_at_batch"] for x in layers),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--active", type=float, default=0.19, help="fraction of active inputs in the forward walk")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.batch < 1 or not 0 < args.active <= 1:
        ap.error("--batch must be >= 1 and --active in (0, 1]")
    refuse_bad_output_file(ap, args.out)
    rows = []
    for arch in args.archs.split(","):
        shape = ARCHS.get(arch, (1, 28, 28))
        r = count(arch, shape, args.batch, args.active)
        target = TARGETS.get(arch, VGG_TARGET if arch.startswith("64C3") else None)
        r["target_samples_per_s"] = target
        r["tflops_needed_at_target"] = r["flop_per_sample"] * target / 1e12 if target else None  # JSON null
        rows.append(r)
        goal = f"target {target} samples/s -> {r['tflops_needed_at_target']:.2f} TFLOP/s" if target else "no target"
        print(
            f"{arch}: {r['synapses_per_sample'] / 1e6:.2f} M synapses/sample, "
            f"{r['flop_per_sample'] / 1e6:.1f} MFLOP/sample per training step, {goal}; "
            f"largest im2col buffer {r['largest_patch_buffer_bytes'] / 2**20:.0f} MiB at batch {args.batch}; "
            f"Adam {r['adam_bytes_per_step'] / 2**20:.1f} MiB/step"
        )
    if args.out:
        write_json(args.out, {"batch": args.batch, "active": args.active, "archs": rows, "environment": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
