"""Where the time goes: torch.profiler's per-operator table for the paper's layers and a training step.

    python -m benchmarks.profile_ops [--device cuda] [--backend auto] [--cases conv1,conv2,784-800,cnn-step]
                                     [--batch 256] [--calls 5] [--top 12] [--step-arch ARCH] [--out FILE.json]

Cases: ``784-800``, ``conv1``, ``conv2`` (the forward of ``benchmarks.layers``'s layers, same inputs) and
``cnn-step`` (a training step of ``--step-arch``, by default 16C5-P2-32C5-P2-800-128-10: forward, backward,
Adam, built by ``benchmarks.train_step.make_step``). Each case is warmed up twice (kernel compilation), then ``--calls`` calls are
profiled. Printed per case: the wall time per call, the device's busy time (on a GPU the time of its
kernels and copies, Triton kernels by name; on a CPU the operators' self time) and its fraction of the
wall time, and the kernels (operators on a CPU) with the most time, with their share of that total and
their number of calls. The profiler adds a little overhead per operator: the wall times here are for
locating the time, ``benchmarks.layers`` and ``benchmarks.train_step`` give the speeds.
"""

from __future__ import annotations

import json
import time

import torch

from benchmarks.common import device_parser, environment, refuse_bad_output_file, write_json

CASES = ("784-800", "conv1", "conv2", "cnn-step")
STEP_ARCH = "16C5-P2-32C5-P2-800-128-10"
_LAYER_CASES = {"784-800": "784-800", "conv1": "conv1 1-16C5 28x28", "conv2": "conv2 16-32C5 12x12"}


def _case_fn(case: str, batch: int, device: str, backend: str, step_arch: str = STEP_ARCH):
    """A no-argument callable doing one call of ``case``."""
    from relpsp.functional import relpsp_conv2d, relpsp_linear

    if case in _LAYER_CASES:
        from benchmarks.layers import _inputs

        t_in, weight, kind, _source = _inputs(_LAYER_CASES[case], batch, device)
        op = relpsp_linear if kind == "linear" else relpsp_conv2d

        def fwd():
            with torch.no_grad():
                op(t_in, weight, backend=backend)

        return fwd
    if case == "cnn-step":
        from benchmarks.train_step import make_step

        step_k, *_ = make_step(step_arch, batch, device, backend)
        return lambda: step_k(0)
    raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")


def profile_case(
    case: str, batch: int, device: str, backend: str, calls: int, top: int, step_arch: str = STEP_ARCH
) -> dict:
    """Profile ``calls`` calls of ``case`` after two warm-up calls; the ``top`` operators by self time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn = _case_fn(case, batch, device, backend, step_arch)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        wall = (time.perf_counter() - t0) / calls
    # On a GPU only the device's own events (kernels, copies) count: an operator's self device time is the
    # time of the kernels it launched, so summing operators and kernels would count each kernel twice.
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [
        e for e in prof.key_averages() if getattr(e, attr, 0) > 0 and (not cuda or e.device_type == DeviceType.CUDA)
    ]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    rows = [
        {
            "name": e.key,
            "self_us_per_call": getattr(e, attr) / calls,
            "share": getattr(e, attr) / total if total else 0.0,
            "count_per_call": e.count / calls,
        }
        for e in events[:top]
    ]
    return {
        "case": case,
        "arch": step_arch if case == "cnn-step" else None,
        "batch": batch,
        "device": device,
        "backend": backend,
        "calls": calls,
        "wall_ms_per_call": 1000 * wall,
        "time_kind": "GPU time of kernels and copies" if cuda else "self CPU time of operators",
        "self_ms_per_call_all_ops": total / calls / 1000,
        "busy_fraction": total / calls / 1e6 / wall if wall > 0 else None,
        "top": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = device_parser(__doc__)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--step-arch", default=STEP_ARCH, help="the network of the cnn-step case")
    args = ap.parse_args(argv)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    if args.batch < 1 or args.calls < 1 or args.top < 1:
        ap.error("--batch, --calls and --top must be >= 1")
    refuse_bad_output_file(ap, args.out)
    env = environment(args.device)
    print("environment:", json.dumps(env))
    results = []
    for case in args.cases.split(","):
        r = profile_case(case, args.batch, args.device, args.backend, args.calls, args.top, args.step_arch)
        results.append(r)
        print(
            f"\n{case} ({args.backend}, batch {args.batch}): {r['wall_ms_per_call']:.2f} ms per call, "
            f"{r['time_kind']} {r['self_ms_per_call_all_ops']:.2f} ms ({100 * r['busy_fraction']:.0f}% of the wall time)"
        )
        for row in r["top"]:
            print(
                f"  {row['self_us_per_call']:10.1f} us {100 * row['share']:5.1f}%  x{row['count_per_call']:<6.1f} "
                f"{row['name'][:90]}"
            )
    if args.out:
        write_json(args.out, {"benchmark": "profile_ops", "environment": env, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
