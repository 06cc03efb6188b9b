"""Full training step (forward, backward, Adam) per architecture: samples/s and peak memory.

    python -m benchmarks.train_step [--archs 784-800-10,16C5-P2-32C5-P2-800-128-10] [--batch 256]
                                    [--device cpu|cuda] [--backend auto] [--steps 10] [--threads N]
                                    [--input-shape C,H,W|F] [--kernel relpsp|window] [--out FILE.json]

Inputs are MNIST test images with random labels (28x28 archs; about 19% of pixels spike) or, for 3-channel archs
(by default 32x32x3) and any other ``--input-shape`` (e.g. 1,64,64 for Caltech's network), synthetic
images with the same fraction of lit pixels; a one-number shape F (e.g. 4 for Yin-Yang's 4-30-3) gives
uniform random features. Each architecture is timed in a fresh
process (so peak memory is its own); the model starts from the default initialisation and takes real
optimizer steps, so the spike patterns evolve as in training.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import (
    add_threads_argument,
    device_parser,
    environment,
    load_cpu_kernels,
    mnist_like_batch,
    peak_rss_mib,
    refuse_bad_output_file,
    reset_peak_rss,
    window_model_config,
    write_json,
)

DEFAULT_ARCHS = ("784-800-10", "16C5-P2-32C5-P2-800-128-10")


def narrow_arch(arch: str) -> str:
    """``arch`` with every convolution's channels and every hidden layer's width set to 2, its input
    declaration and class count kept: "16C5-P2-32C5-P2-800-128-10" -> "2C5-P2-2C5-P2-2-2-10"."""
    tokens = arch.split("-")
    out = []
    for i, tok in enumerate(tokens):
        if i == len(tokens) - 1 or (i == 0 and tok.isdigit()):
            out.append(tok)
        else:
            out.append(re.sub(r"^\d+(?=C|$)", "2", tok))
    return "-".join(out)


def _build(arch: str, shape: tuple[int, ...], backend: str, kernel: str) -> torch.nn.Module:
    from relpsp.models import build_model, model_from_config

    if kernel == "window":
        return model_from_config(window_model_config(arch, shape), backend)
    return build_model(arch, shape, backend=backend)


def make_step(
    arch: str, batch: int, device: str, backend: str, shape: tuple[int, ...] | None = None, kernel: str = "relpsp"
):
    """A training step of ``arch`` on a fixed set of 4 batches: ``(step, model, x_all, y_all, source)``,
    where ``step(k)`` runs forward, loss, backward and an Adam step on batch ``k % 4``. Inputs are MNIST
    test images (input ``shape`` (1, 28, 28)) or synthetic images with the same fraction of lit pixels
    (any other shape; by default (3, 32, 32) for archs starting 64C3, else (1, 28, 28)); labels are
    random. ``kernel="window"``: the windowed neuron with the model settings of
    ``benchmarks.common.WINDOW_CONFIG`` (its architecture and input shape replaced by these) instead of
    ReL-PSP. Also used by ``benchmarks.profile_ops``."""
    from relpsp.functional import spike_time_cross_entropy

    if shape is None:
        shape = (3, 32, 32) if arch.startswith("64C3") else (1, 28, 28)
    torch.manual_seed(0)
    if len(shape) == 1:  # a feature vector (Yin-Yang's 4 features): uniform intensities, every input fires
        x_all = torch.rand(batch * 4, *shape, generator=torch.Generator().manual_seed(0))
        source = f"synthetic {shape[0]} features"
    elif shape != (1, 28, 28):
        g = torch.Generator().manual_seed(0)
        lit = torch.rand(batch * 4, *shape, generator=g) < 0.19
        x_all = torch.where(lit, torch.rand(batch * 4, *shape, generator=g), 0.0)
        source = "synthetic " + "x".join(str(n) for n in shape[1:]) + f"x{shape[0]}"
    else:
        x_all, source = mnist_like_batch(batch * 4, seed=1)
    y_all = torch.randint(0, int(arch.rsplit("-", 1)[-1]), (len(x_all),))  # the last layer is the class count
    model = _build(arch, shape, backend, kernel).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    x_all, y_all = x_all.to(device), y_all.to(device)

    def step(k: int) -> None:
        s = (k % 4) * batch
        t_out = model(x_all[s : s + batch])
        loss = spike_time_cross_entropy(t_out, y_all[s : s + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, model, x_all, y_all, source


def run_one(
    arch: str,
    batch: int,
    device: str,
    backend: str,
    steps: int,
    threads: int = 0,
    shape: tuple[int, ...] | None = None,
    kernel: str = "relpsp",
) -> dict:
    from relpsp.functional import spike_time_cross_entropy
    from relpsp.train import set_threads

    if device == "cpu":
        set_threads(threads, torch_heavy=kernel == "window")  # as relpsp train sets them for this kernel
    step, _model, x_all, y_all, source = make_step(arch, batch, device, backend, shape, kernel)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    load_cpu_kernels()  # numba's import and compiled code (tens of MiB) are a fixed cost, not this case's memory
    # So is the code torch first touches in a step: one step, on one sample, of a narrow network with the
    # same kinds of layer (every width 2), before the baseline. A full-size copy did this before, and its
    # freed weights, gradients and optimizer state were reused by the timed steps' own and hid them (0.1
    # MiB reported for a network of 3.2 million weights).
    twin = _build(narrow_arch(arch), tuple(x_all.shape[1:]), backend, kernel).to(device)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=3e-4)
    spike_time_cross_entropy(twin(x_all[:1]), y_all[:1]).backward()
    twin_opt.step()
    del twin, twin_opt
    sync()
    base = reset_peak_rss()
    step(0)
    step(1)
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        step(k)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib() - base
    return {
        "arch": arch,
        "kernel": kernel,
        "batch": batch,
        "device": device,
        "backend": backend,
        "input_source": source,
        "samples_per_s": batch / med,
        "step_ms_median": 1000 * med,
        "step_ms_min": 1000 * times[0],
        "steps_timed": steps,
        "peak_mem_mib": peak,
        "peak_mem_kind": "CUDA max allocated"
        if device.startswith("cuda")
        else "peak RSS growth from before the first step (model and data built, torch's code loaded by a "
        "narrow network's step)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = device_parser(__doc__)
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS))
    ap.add_argument("--steps", type=int, default=10)
    add_threads_argument(ap)
    ap.add_argument(
        "--input-shape", help="C,H,W (images) or F (features) of every arch's input (default: by arch, see above)"
    )
    ap.add_argument(
        "--kernel",
        choices=("relpsp", "window"),
        default="relpsp",
        help="relpsp: the paper's neuron; window: the windowed neuron with standardised weights "
        "(configs/mnist_cnn_window.toml's settings)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(n) for n in args.input_shape.split(","))
        except ValueError:
            ap.error(f"--input-shape must be C,H,W or F (integers), got {args.input_shape!r}")
        if len(shape) not in (1, 3):
            ap.error(f"--input-shape must be C,H,W or F (three integers or one), got {args.input_shape!r}")
        if min(shape) < 1:
            ap.error("--input-shape sizes must be >= 1")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    if args.batch < 1 or args.steps < 1:
        ap.error("--batch and --steps must be >= 1")
    refuse_bad_output_file(ap, args.out)
    if args.one:
        row = run_one(args.one, args.batch, args.device, args.backend, args.steps, args.threads, shape, args.kernel)
        print(json.dumps(row))
        return 0
    if args.device == "cpu":
        from relpsp.train import set_threads

        # as each timed child does, so that the environment below shows its threads
        set_threads(args.threads, torch_heavy=args.kernel == "window")
    env = environment(args.device)
    print("environment:", json.dumps(env))
    rows = []
    for arch in args.archs.split(","):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.train_step",
            "--one",
            arch,
            "--batch",
            str(args.batch),
            "--device",
            args.device,
            "--backend",
            args.backend,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--kernel",
            args.kernel,
        ] + (["--input-shape", args.input_shape] if shape else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            rows.append({"arch": arch, "error": res.stderr.strip().splitlines()[-1:], "returncode": res.returncode})
            print(f"{arch:40s} error: {rows[-1]['error']}", flush=True)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{arch:40s} {r['samples_per_s']:9.0f} samples/s  step {r['step_ms_median']:8.1f} ms  "
            f"peak {r['peak_mem_mib']:8.1f} MiB",
            flush=True,
        )
    if args.out:
        write_json(args.out, {"benchmark": "train_step", "environment": env, "results": rows})
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
