"""Forward and forward+backward time of the paper's layers at batch 256, per implementation.

    python -m benchmarks.layers [--batch 256] [--impls numba,torch,ref] [--threads N] [--repeat N] [--out FILE.json]

Layers: 784-800 and 800-10 (the MNIST MLP), and the two convolutions of 16C5-P2-32C5-P2-800-128-10
(1->16 C5 on 28x28, 16->32 C5 on 12x12). Inputs are realistic: MNIST test images (about 19% of pixels
spike) latency-coded, and for deeper layers the spike times the preceding default-initialised layers
produce. Implementations: ``numba`` (compiled CPU kernels), ``torch`` (chunked plain-torch path, also the
CUDA fallback) and ``ref`` (the autograd reference twin, O(R N_in N_out) memory). Each measurement runs
in a fresh process so that its peak resident memory (above the process's baseline with the inputs built)
can be reported. Times are the median over ``--repeat`` calls (7; 3 for ``ref``); the minimum is recorded
too (``fwd_min_ms``, ``fwd_bwd_min_ms``): on a shared machine it is the steadier figure for comparing
two versions of a kernel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from benchmarks.common import (
    add_threads_argument,
    environment,
    load_cpu_kernels,
    mnist_like_batch,
    peak_rss_mib,
    refuse_bad_output_file,
    reset_peak_rss,
    thread_counts,
    time_it,
    write_json,
)
from relpsp.autograd import BACKENDS

CASES = ("784-800", "800-10", "conv1 1-16C5 28x28", "conv2 16-32C5 12x12")
# Skip the reference where its [R, N_out, N_in] intermediates would need more than this.
REF_LIMIT_BYTES = 6 * 2**30


def _inputs(case: str, batch: int, device: str):
    from relpsp.functional import latency_encode, min_time_pool2d
    from relpsp.nn import SpikingConv2d, SpikingLinear

    torch.manual_seed(0)
    x, source = mnist_like_batch(batch)
    t0 = latency_encode(x).to(device)
    l1 = SpikingLinear(784, 800).to(device)
    c1 = SpikingConv2d(1, 16, 5).to(device)
    c2 = SpikingConv2d(16, 32, 5).to(device)
    with torch.no_grad():
        if case == "784-800":
            return t0.flatten(1), l1.weight.detach(), "linear", source
        if case == "800-10":
            l2 = SpikingLinear(800, 10).to(device)
            return l1(t0.flatten(1)), l2.weight.detach(), "linear", source
        if case.startswith("conv1"):
            return t0, c1.weight.detach(), "conv", source
        if case.startswith("conv2"):
            return min_time_pool2d(c1(t0), 2), c2.weight.detach(), "conv", source
        raise ValueError(f"unknown case {case!r}; known: {CASES}")


def _rows_cost(case: str, t_in: torch.Tensor, weight: torch.Tensor) -> int:
    if case.startswith("conv"):
        k = weight.shape[2]
        h, w = t_in.shape[2] - k + 1, t_in.shape[3] - k + 1
        return t_in.shape[0] * h * w * weight[0].numel() * weight.shape[0]
    return t_in.shape[0] * t_in.shape[1] * weight.shape[0]


def run_one(case: str, impl: str, batch: int, device: str, threads: int = 0, repeat: int = 0) -> dict:
    """One case and implementation; ``repeat`` timed calls each (0: 7, or 3 for ``ref``)."""
    from relpsp.functional import relpsp_conv2d, relpsp_conv2d_ref, relpsp_linear, relpsp_linear_ref
    from relpsp.train import set_threads

    if device == "cpu":
        set_threads(threads, torch_heavy=impl in ("torch", "ref"))  # plain torch ops: torch gets the threads
    t_in, weight, kind, source = _inputs(case, batch, device)
    if impl == "ref" and _rows_cost(case, t_in, weight) * t_in.element_size() * 6 > REF_LIMIT_BYTES:
        return {"case": case, "impl": impl, "skipped": "reference needs more than 6 GiB here"}
    if kind == "linear":
        op = (
            (lambda t, w: relpsp_linear_ref(t, w))
            if impl == "ref"
            else (lambda t, w: relpsp_linear(t, w, backend=impl))
        )
    else:
        op = (
            (lambda t, w: relpsp_conv2d_ref(t, w))
            if impl == "ref"
            else (lambda t, w: relpsp_conv2d(t, w, backend=impl))
        )
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    load_cpu_kernels()  # numba's import and compiled code (tens of MiB) are a fixed cost, not this case's memory
    # So is the code torch itself first touches (randn, where, autograd; about 35 MiB of pages): one forward
    # and backward on a single row and a single output neuron before the baseline. ru_maxrss is a high-water
    # mark, so the baseline must be read before any full-size run, and the warm-up must be small: freed,
    # a full-size weight gradient was reused by the timed run's own and hid it (8.5 against 18.9 MiB for
    # the 784-800 layer at batch 256).
    t1, w1 = t_in[:1].clone().requires_grad_(True), weight[:1].clone().requires_grad_(True)
    o1 = op(t1, w1)
    ok1 = torch.isfinite(o1)
    torch.autograd.backward(torch.where(ok1, o1, 0), torch.where(ok1, torch.randn_like(o1), 0))
    del t1, w1, o1, ok1
    base = reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = op(t_in, weight)
    g = torch.where(torch.isfinite(out), torch.randn_like(out), 0)

    def fwd():
        with torch.no_grad():
            op(t_in, weight)

    t_req = t_in.clone().requires_grad_(True)
    w_req = weight.clone().requires_grad_(True)

    def fwd_bwd():
        o = op(t_req, w_req)
        t_req.grad = None
        w_req.grad = None
        torch.autograd.backward(torch.where(torch.isfinite(o), o, 0), g)

    repeat = repeat or (3 if impl == "ref" else 7)
    tf = time_it(fwd, warmup=1, repeat=repeat, sync=sync)
    tfb = time_it(fwd_bwd, warmup=1, repeat=repeat, sync=sync)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else peak_rss_mib() - base
    return {
        "case": case,
        "impl": impl,
        "batch": batch,
        "input_source": source,
        "input_spike_fraction": float(torch.isfinite(t_in).float().mean()),
        "output_spike_fraction": float(torch.isfinite(out).float().mean()),
        "fwd_samples_per_s": batch / tf["median_s"],
        "fwd_bwd_samples_per_s": batch / tfb["median_s"],
        "fwd_ms": 1000 * tf["median_s"],
        "fwd_bwd_ms": 1000 * tfb["median_s"],
        "fwd_min_ms": 1000 * tf["min_s"],
        "fwd_bwd_min_ms": 1000 * tfb["min_s"],
        "repeat": repeat,
        "peak_mem_mib": peak,
        "peak_mem_kind": "CUDA max allocated" if device.startswith("cuda") else "RSS above baseline",
        # the threads this row ran with: set_threads gives torch the cores for torch and ref, numba for
        # numba, so the environment line (read before any row) does not describe every row
        **thread_counts(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--impls", default="numba,torch,ref")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--device", default="cpu")
    add_threads_argument(ap)
    ap.add_argument("--repeat", type=int, default=0, help="timed calls per measurement (0: 7, or 3 for ref)")
    ap.add_argument("--out", help="JSON file for the results")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    if args.repeat < 0:
        ap.error("--repeat must be >= 0")
    unknown = [c for c in args.cases.split(",") if c not in CASES] + [
        i for i in args.impls.split(",") if i not in (*BACKENDS, "ref")
    ]
    if unknown and not args.one:
        ap.error(f"unknown case(s) or impl(s) {unknown}; cases: {', '.join(CASES)}; impls: {', '.join(BACKENDS)}, ref")
    refuse_bad_output_file(ap, args.out)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.batch, args.device, args.threads, args.repeat)))
        return 0
    from relpsp.train import set_threads

    if args.device == "cpu":
        set_threads(args.threads)
    env = environment(args.device)
    print("environment:", json.dumps(env))
    rows = []
    for case in args.cases.split(","):
        for impl in args.impls.split(","):
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.layers",
                "--one",
                case,
                impl,
                "--batch",
                str(args.batch),
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--repeat",
                str(args.repeat),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                rows.append(
                    {
                        "case": case,
                        "impl": impl,
                        "error": res.stderr.strip().splitlines()[-1:],
                        "returncode": res.returncode,
                    }
                )
            else:
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            if "fwd_samples_per_s" in r:
                print(
                    f"{case:22s} {impl:6s} fwd {r['fwd_samples_per_s']:9.0f}/s ({r['fwd_ms']:8.1f} ms, min "
                    f"{r['fwd_min_ms']:.1f})  fwd+bwd {r['fwd_bwd_samples_per_s']:9.0f}/s ({r['fwd_bwd_ms']:8.1f} ms, "
                    f"min {r['fwd_bwd_min_ms']:.1f})  peak {r['peak_mem_mib']:8.1f} MiB",
                    flush=True,
                )
            else:
                print(f"{case:22s} {impl:6s} {r.get('skipped') or r.get('error')}", flush=True)
    if args.out:
        write_json(args.out, {"benchmark": "layers", "environment": env, "results": rows})
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
