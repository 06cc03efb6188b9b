"""Deployment check of a trained checkpoint on a whole test set: the event-driven simulator (float64,
written independently of the training code) against the trained torch model (float32, as trained), and
the simulator run from an exported NIR file against the simulator run from the checkpoint (not for a
windowed network, which has no NIR form: ``nir_vs_checkpoint_sim`` is then null).

    python -m benchmarks.deploy_check CKPT [--limit N] [--out FILE.json]

Reports how many decisions agree (sim vs torch, NIR vs checkpoint), the largest spike-time difference
over neurons that fire in both (absolute, and relative to max(|t|, 1)), neurons that fire in only one,
and the accuracies. Spike times are compared twice: end to end (simulator and model each run their own
chain, so a float32 rounding in one layer is carried, and can be amplified, through the later ones) and
layer by layer (each simulator layer fed the model's own input spikes to that layer, which isolates the
two implementations of the neuron from the conditioning of the network).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import environment, refuse_bad_output_file, write_json


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--data-dir")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    refuse_bad_output_file(ap, args.out, args.checkpoint)  # never over the checkpoint being measured

    from relpsp.export.nir import export_nir, read_nir
    from relpsp.models import layer_outputs
    from relpsp.sim import SimOptions, load_inputs, network_from_checkpoint, run_layer, simulate
    from relpsp.train import data_options, load_trained, set_threads

    set_threads(0)
    net, _ = network_from_checkpoint(args.checkpoint)
    model, cfg, _ = load_trained(args.checkpoint)
    x, y = load_inputs(cfg.data.dataset, "test", args.data_dir, args.limit, data_options(cfg))
    simulate(net, x[:2], SimOptions(), record_layers=True)  # loads the compiled kernels: not timed
    t0 = time.perf_counter()
    sim = simulate(net, x, SimOptions(), record_layers=True)
    sim_s = time.perf_counter() - t0
    assert sim.layer_times is not None
    layer_times = sim.layer_times  # narrowed to a list for the nested function below

    def new_stats() -> dict:
        return {
            "max_abs_dt": 0.0,
            "max_rel_dt": 0.0,
            "spikes_compared": 0,
            "spikes_rel_dt_over_1e-5": 0,
            # simulator time of the earliest such spike (inf: none, written as null in the JSON)
            "earliest_spike_over_1e-5": float("inf"),
            "spikes_over_1e-5_before_their_decision": 0,  # ... earlier than the image's own decision
            "neurons_firing_in_only_one": 0,
        }

    def accumulate(st: dict, a: np.ndarray, e: np.ndarray, t_dec: np.ndarray) -> None:
        """Add the comparison of simulator times ``a`` with model times ``e`` (``[B, ...]``) to ``st``."""
        st["neurons_firing_in_only_one"] += int((np.isfinite(a) != np.isfinite(e)).sum())
        both = np.isfinite(a) & np.isfinite(e)
        if not both.any():
            return
        d = np.abs(a[both] - e[both])
        rel = d / np.maximum(np.abs(e[both]), 1.0)  # relative above the input window's scale
        st["max_abs_dt"] = max(st["max_abs_dt"], float(d.max()))
        st["max_rel_dt"] = max(st["max_rel_dt"], float(rel.max()))
        st["spikes_compared"] += int(both.sum())
        bad = rel > 1e-5
        st["spikes_rel_dt_over_1e-5"] += int(bad.sum())
        if bad.any():
            st["earliest_spike_over_1e-5"] = min(st["earliest_spike_over_1e-5"], float(a[both][bad].min()))
            dec = np.broadcast_to(t_dec.reshape((-1,) + (1,) * (a.ndim - 1)), a.shape)
            st["spikes_over_1e-5_before_their_decision"] += int((a[both][bad] < dec[both][bad]).sum())

    def compare(dtype: torch.dtype) -> tuple[dict, dict, np.ndarray]:
        """Every layer's spike times of the torch model in ``dtype`` against the simulator's: end to end
        (each runs its own chain), and layer by layer (the simulator's layer fed the model's input to it)."""
        m = model.to(dtype)
        st, per_layer = new_stats(), new_stats()
        dec = []
        with torch.no_grad():
            for s in range(0, len(x), 500):
                outs = [o.double().numpy() for o in layer_outputs(m, torch.from_numpy(x[s : s + 500]).to(dtype))]
                t_dec = sim.t_decision[s : s + 500]
                for k, o in enumerate(outs):
                    a = layer_times[k][s : s + 500]
                    accumulate(st, a, o.reshape(a.shape), t_dec)
                    if k:
                        inp = outs[k - 1].reshape(layer_times[k - 1][s : s + 500].shape)
                        a1 = run_layer(net, k - 1, inp)
                        accumulate(per_layer, a1, o.reshape(a1.shape), t_dec)
                t = outs[-1]
                dec.append(np.where(np.isfinite(t).any(1), t.argmin(1), -1))
        decisions = np.concatenate(dec)
        st["decisions_equal"] = int((decisions == sim.decision).sum())
        return st, per_layer, decisions

    decided = sim.t_decision[np.isfinite(sim.t_decision)]
    latest_decision = float(decided.max()) if decided.size else float("inf")  # inf: no image decided
    cmp64, layer64, _ = compare(torch.float64)
    cmp32, layer32, torch_dec = compare(torch.float32)

    nir: dict | None = None  # a windowed network has no NIR form (relpsp.export.nir refuses it)
    accuracy = {"torch_float32": float((torch_dec == y).mean()), "sim_float64": sim.accuracy(y)}
    if net.window is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.nir"
            export_nir(args.checkpoint, path)
            nir_bytes = path.stat().st_size
            nir_net = read_nir(path)
        nir_res = simulate(nir_net, x, SimOptions())
        nir = {
            "decisions_equal": int((nir_res.decision == sim.decision).sum()),
            "max_abs_dt_output": _max_abs_diff(sim.t_out, nir_res.t_out),
            "same_silent_outputs": bool((np.isfinite(sim.t_out) == np.isfinite(nir_res.t_out)).all()),
            "nir_file_bytes": nir_bytes,
        }
        accuracy["sim_from_nir"] = nir_res.accuracy(y)

    res = {
        "checkpoint": args.checkpoint,
        "arch": cfg.model.arch,
        "dataset": cfg.data.dataset,
        "n_images": len(y),
        "sim_vs_torch_float32": cmp32,
        "sim_vs_torch_float64": cmp64,
        "sim_vs_torch_float32_layer_by_layer": layer32,
        "sim_vs_torch_float64_layer_by_layer": layer64,
        "window": net.window,
        "nir_vs_checkpoint_sim": nir,
        "accuracy": accuracy,
        "latest_decision_time": latest_decision,
        "sim_seconds": sim_s,
        "environment": environment(),
    }
    n = len(y)
    print("environment:", json.dumps(res["environment"]))
    print(f"{cfg.model.arch} on {cfg.data.dataset} test, {n} images")
    for name, c, lay in (("float32", cmp32, layer32), ("float64", cmp64, layer64)):
        print(f"simulator (float64) vs torch model ({name}): decisions equal {c['decisions_equal']}/{n}")
        for how, st in (("end to end", c), ("layer by layer, same input spikes", lay)):
            print(
                f"  {how}: max |dt| {st['max_abs_dt']:.3g} (relative to max(|t|,1): {st['max_rel_dt']:.3g}), "
                f"spikes with relative |dt| > 1e-5: {st['spikes_rel_dt_over_1e-5']} of {st['spikes_compared']} "
                f"({st['spikes_over_1e-5_before_their_decision']} before their image's decision; earliest at "
                f"t = {st['earliest_spike_over_1e-5']:.4g}, latest decision t = {latest_decision:.4g}), "
                f"neurons firing in only one: {st['neurons_firing_in_only_one']}"
            )
    if nir is None:
        print("NIR file vs checkpoint: not run (a windowed network has no NIR form)")
    else:
        print(
            f"NIR file vs checkpoint (both simulated): decisions equal {nir['decisions_equal']}/{n}, max |dt| of "
            f"outputs {nir['max_abs_dt_output']:.3g}, same silent outputs: {nir['same_silent_outputs']}"
        )
    print("accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in res["accuracy"].items()))
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
