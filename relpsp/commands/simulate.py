"""``relpsp simulate``: run a checkpoint or a NIR file through the event-driven simulator.

Reports accuracy, how often no output neuron fires, the mean decision time and the spikes per layer,
optionally with fixed-point weights (``--weight-bits``), a clocked time grid (``--time-bits``) and a
global cut-off (``--t-cutoff``), and with Gaussian timing noise on every spike (``--jitter``). ``--compare`` also runs the trained torch model (float32 by default, or float64) on the same
images and reports the decision agreement and the largest spike-time difference over neurons that fire
in both (and how many neurons fire in only one of them).

The simulator itself (``relpsp.sim``) never imports the training code; only this command does, for
``--compare``. ``relpsp cost`` shares its arguments (``add_sim_arguments``) and uses ``prepare`` and
``write_json`` from here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from relpsp.commands import add_threads_argument

__all__ = ["add_sim_arguments", "configure", "load_source", "prepare", "run", "sim_options", "write_json"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def add_sim_arguments(
    parser: argparse.ArgumentParser,
    *,
    default_limit: int | None,
    default_time_bits: int | None,
    default_weight_bits: str = "float64",
) -> None:
    """Options shared by ``simulate`` and ``cost``; ``default_weight_bits`` says in ``--weight-bits``' help
    what the command uses without it."""
    parser.add_argument("source", metavar="CKPT_OR_NIR", help="a relpsp checkpoint (or its run folder) or a NIR file")
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset name for relpsp.data, or an .npz file: arrays x and y, or a dataset archive of splits (default: the checkpoint's)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="dataset split (default: test); for a checkpoint on its own dataset, the run's own splits as in "
        "relpsp eval (val: its held-out validation set, train: its training images without it)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="dataset folder (default: the checkpoint's data.data_dir, else $RELPSP_DATA or ~/.cache/relpsp)",
    )
    parser.add_argument("--limit", type=int, default=default_limit, help="use the first N images")
    parser.add_argument(
        "--weight-bits",
        type=int,
        default=None,
        help=f"symmetric fixed-point weights per layer (default: {default_weight_bits})",
    )
    parser.add_argument(
        "--time-bits",
        type=int,
        default=default_time_bits,
        help="round every spike time up to a grid of 2^B steps over [0, T]"
        + (f" (default: {default_time_bits})" if default_time_bits is not None else " (default: continuous time)"),
    )
    parser.add_argument(
        "--time-window",
        type=float,
        default=None,
        help="T of the time grid (default: the cut-off, else max(t_in, t_max), else measured on the first "
        "1000 images, see --window-rule)",
    )
    parser.add_argument(
        "--window-rule",
        choices=("decision", "spikes"),
        default=None,
        help="how T is measured when nothing fixes it: the latest decision time of the first 1000 images "
        "(default) or the 99.9th percentile of all their spike times; refused where T is fixed",
    )
    parser.add_argument("--t-cutoff", type=float, default=math.inf, help="drop every spike later than T (all layers)")
    parser.add_argument("--backend", choices=["auto", "numpy", "numba"], default="auto", help="simulator backend")
    parser.add_argument("--batch-size", type=int, default=256, help="images per simulation step")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the results as JSON")
    add_threads_argument(parser, None)


def configure(parser: argparse.ArgumentParser) -> None:
    add_sim_arguments(parser, default_limit=None, default_time_bits=None)
    parser.add_argument(
        "--compare", action="store_true", help="also run the torch model and compare decisions and spike times"
    )
    parser.add_argument(
        "--compare-dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the torch model for --compare (default float32: the trained model as it runs)",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="Gaussian timing noise: move every spike (input and spiking layers) by N(0, SIGMA^2), in the "
        "network's time unit (default 0: none); not with --time-bits",
    )
    parser.add_argument(
        "--jitter-seed", type=int, default=0, help="seed of the timing noise (image n draws from (seed, n))"
    )


def is_nir_file(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == _HDF5_MAGIC


def load_source(path: str | os.PathLike) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """``(SimNetwork, checkpoint meta or None for a NIR file, data settings)``: the data settings are the
    checkpoint's ``[data]`` section or the NIR file's ``relpsp.data`` (empty when it has none)."""
    from relpsp._fileio import why_not_a_file
    from relpsp.sim import network_from_checkpoint

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} {why_not_a_file(p)}")
    if is_nir_file(p):
        from relpsp.export.nir import network_from_nir, nir_data_config, read_nir_graph

        graph = read_nir_graph(p)
        return network_from_nir(graph), None, nir_data_config(graph) or {}
    net, meta = network_from_checkpoint(p)  # the checkpoint's config is validated there
    return net, meta, meta["config"].get("data") or {}


def sim_options(args: argparse.Namespace, **overrides: Any) -> Any:
    from relpsp.sim import SimOptions, resolve_backend

    if args.time_bits is None and overrides.get("time_bits") is None:
        if args.time_window is not None or getattr(args, "window_rule", None) is not None:
            raise ValueError("--time-window and --window-rule set up the time grid: they need --time-bits")
    kw = dict(
        weight_bits=args.weight_bits,
        time_bits=args.time_bits,
        t_cutoff=args.t_cutoff,
        time_window=args.time_window,
        backend=resolve_backend(args.backend),  # the one that runs, so that reports name it
        batch_size=args.batch_size,
        jitter=getattr(args, "jitter", 0.0),  # relpsp cost shares these arguments but has no noise
        jitter_seed=getattr(args, "jitter_seed", 0),
    )
    kw.update(overrides)
    return SimOptions(**kw)


def checkpoint_data_options(data_cfg: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Loader options for ``dataset`` from the ``[data]`` settings the network was trained with
    (``relpsp.train.data_options``, as ``relpsp eval`` uses them); none for an ``.npz`` file of inputs ``x``
    and ``y`` or a source without them (a NIR file from another tool). An archive of splits is a dataset:
    it gets them."""
    from relpsp.sim import is_inputs_file

    if not data_cfg or is_inputs_file(dataset):
        return {}
    from relpsp.config import config_from_dict
    from relpsp.train import data_options

    return data_options(config_from_dict({"data": data_cfg}), dataset)


def warn_unapplied_preprocessing(data_cfg: dict[str, Any]) -> None:
    """An ``.npz`` file's images go in as they are: say so (on stderr) when the network was trained on
    transformed inputs, which the file must then already hold."""
    steps = [name for name in ("invert", "dog") if data_cfg.get(name)]
    if float(data_cfg.get("bias_input", -1.0)) >= 0:
        steps.append("bias_input")
    if steps:
        print(
            f"warning: the network was trained with data.{', data.'.join(steps)}; the .npz images are used as "
            "they are, so they must already be transformed that way",
            file=sys.stderr,
        )


def _same_dataset(a: Any, b: Any) -> bool:
    """Whether two dataset names are one registry dataset, or one dataset archive of splits (an .npz file of
    inputs ``x`` and ``y`` never is)."""
    from relpsp.data import canonical_name
    from relpsp.sim import is_split_archive

    if not isinstance(a, str) or not isinstance(b, str):
        return False
    if a.endswith(".npz") or b.endswith(".npz"):
        same = Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
        return same and is_split_archive(a)
    try:
        return canonical_name(a) == canonical_name(b)
    except ValueError:
        return False


def run_split_inputs(meta: dict[str, Any], split: str, data_dir: str | None, limit: int | None) -> tuple[Any, Any]:
    """``(x float64, y int64)`` of the run's own ``split`` of its dataset, as ``relpsp eval`` takes it: its
    held-out validation set (``data.val_size``) and its training subset, not the dataset's whole split."""
    from relpsp.config import config_from_dict
    from relpsp.sim import inputs_from_arrays
    from relpsp.train import run_split

    x, y, _ = run_split(config_from_dict(meta["config"]), split, data_dir)
    return inputs_from_arrays(x, y, limit, f"this run's {split} split")


def prepare(args: argparse.Namespace, *, weight_bits: int | None = None) -> dict[str, Any]:
    """Load the network and the images and resolve the options (calibrating the time window if a grid
    is asked for and nothing fixes T). Returns a dict of everything ``run`` needs."""
    from relpsp._fileio import check_output_file
    from relpsp.commands import check_threads, checkpoint_of, use_threads
    from relpsp.sim import as_network_images, calibrate_time_window, is_inputs_file, load_inputs, resolve_time_window

    check_threads(args.threads)
    args.source = checkpoint_of(args.source)  # a run folder: its checkpoint, for every use below and the reports
    if args.out is not None:  # refused before the simulation, not after it
        npz = [args.dataset] if args.dataset and Path(args.dataset).is_file() else []
        check_output_file(args.out, args.source, *npz)
    net, meta, data_cfg = load_source(args.source)
    use_threads(args.threads)  # the simulator's compiled kernels get them (torch one, as in training)
    dataset = args.dataset or data_cfg.get("dataset")
    if not dataset:
        raise ValueError("--dataset is needed: the source is a NIR file that names no dataset")
    data_dir = args.data_dir or data_cfg.get("data_dir")
    if args.split != "test" and meta is not None and _same_dataset(dataset, data_cfg.get("dataset")):
        # the run's own train and val splits (the test split is the dataset's, untouched by the run)
        x, y = run_split_inputs(meta, args.split, data_dir, args.limit)
    else:
        x, y = load_inputs(dataset, args.split, data_dir, args.limit, checkpoint_data_options(data_cfg, dataset))
    if is_inputs_file(dataset):  # an archive of splits is a dataset, preprocessed as in training
        warn_unapplied_preprocessing(data_cfg)
    x = as_network_images(x, net.input_shape)  # e.g. flat [N, 784] for a CNN; a scrambling layout is refused
    if y.min() < 0 or y.max() >= net.n_classes:
        raise ValueError(
            f"labels must be classes 0..{net.n_classes - 1} of the network's {net.n_classes} outputs, "
            f"got values from {y.min()} to {y.max()}"
        )
    options = sim_options(args, **({"weight_bits": weight_bits} if weight_bits is not None else {}))
    window_rule = None  # the rule that chose T, when it was calibrated
    fixed_window = resolve_time_window(net, options) if options.time_bits is not None else None
    if fixed_window is not None and getattr(args, "window_rule", None) is not None:
        fixed_by = (
            "the windowed network's frame, t_in + layers x window"
            if net.frame_end is not None
            else "--time-window, else --t-cutoff, else the layers' t_max"
        )
        raise ValueError(f"--window-rule measures T only when nothing fixes it; here T = {fixed_window:g} ({fixed_by})")
    if options.time_bits is not None and fixed_window is None:
        window_rule = getattr(args, "window_rule", None) or "decision"
        t_window = calibrate_time_window(net, x[:1000], options, rule=window_rule)
        options = sim_options(args, time_window=t_window, weight_bits=options.weight_bits)
        what = (
            f"latest decision time, widened until the {options.time_bits}-bit grid keeps every decision "
            "(or, failing that, the most: a warning then says how many are lost)"
            if window_rule == "decision"
            else "99.9th percentile of the spike times"
        )
        print(f"time window T = {t_window:.6g} ({what} of the first {min(len(x), 1000)} images)")
    return {
        "net": net,
        "meta": meta,
        "dataset": dataset,
        "x": x,
        "y": y,
        "options": options,
        "window_rule": window_rule,
    }


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    from relpsp._fileio import json_text
    from relpsp.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (json_text(payload, sort_keys=True) + "\n").encode())
    print(f"wrote {path}")


def _torch_model(meta: dict[str, Any], arrays_source: str, dtype: str) -> Any:
    import torch

    from relpsp.checkpoint import load_checkpoint
    from relpsp.config import config_from_dict
    from relpsp.models import load_model_arrays, model_from_config

    arrays, _ = load_checkpoint(arrays_source)
    model_cfg = config_from_dict({"model": meta["config"]["model"]}).model
    model = model_from_config(model_cfg)
    load_model_arrays(model, arrays)
    model = model.double() if dtype == "float64" else model.float()
    return model.eval(), torch


def _compare_batch(model: Any, torch: Any, xb: np.ndarray, sim_times: list[np.ndarray], acc: dict[str, Any]) -> None:
    from relpsp.models import layer_outputs

    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        outs = layer_outputs(model, torch.from_numpy(np.ascontiguousarray(xb)).to(dtype))
    for k, (a, e_torch) in enumerate(zip(sim_times, outs)):
        e = e_torch.double().numpy().reshape(a.shape)
        both = np.isfinite(a) & np.isfinite(e)
        acc["only_one"][k] += int((np.isfinite(a) != np.isfinite(e)).sum())
        if both.any():
            d = np.abs(a[both] - e[both])
            acc["max_abs_dt"][k] = max(acc["max_abs_dt"][k], float(d.max()))
            rel = d / np.maximum(np.abs(e[both]), 1.0)  # relative above t = 1 (the input window's scale)
            acc["max_rel_dt"][k] = max(acc["max_rel_dt"][k], float(rel.max()))
    t_torch = outs[-1].numpy()
    fired = np.isfinite(t_torch).any(1)
    dec = np.where(fired, t_torch.argmin(1), -1)
    acc["torch_decision"].append(dec)


def run(args: argparse.Namespace) -> int:
    from relpsp import __version__
    from relpsp.sim import backend_that_runs, concat_results, simulate

    ctx = prepare(args)
    net, meta, x, y, options = ctx["net"], ctx["meta"], ctx["x"], ctx["y"], ctx["options"]
    if args.compare and meta is None:
        raise ValueError("--compare needs a checkpoint (the torch model); the source is a NIR file")
    simulate(net, x[:2], options)  # warm-up: compile the optional kernels outside the timing
    compare_note = None
    if args.compare and (
        options.weight_bits is not None
        or options.time_bits is not None
        or math.isfinite(options.t_cutoff)
        or options.jitter > 0
    ):
        compare_note = (
            "the torch model runs without --weight-bits, --time-bits, --t-cutoff and --jitter: the differences "
            "below include their effect, not only the two implementations'"
        )
        print(f"note: {compare_note}")
    if args.compare:
        model, torch = _torch_model(meta, args.source, args.compare_dtype)
        n_cols = len(net.names)
        acc: dict[str, Any] = {
            "only_one": [0] * n_cols,
            "max_abs_dt": [0.0] * n_cols,
            "max_rel_dt": [0.0] * n_cols,
            "torch_decision": [],
        }
        parts = []
        seconds = 0.0  # simulator time only, not the torch model's
        for i in range(0, len(x), options.batch_size):
            xb = x[i : i + options.batch_size]
            t0 = time.perf_counter()
            r = simulate(net, xb, options, record_layers=True, first_image=i)
            seconds += time.perf_counter() - t0
            assert r.layer_times is not None
            _compare_batch(model, torch, xb, r.layer_times, acc)
            r.layer_times = None
            parts.append(r)
        res = concat_results(parts)
    else:
        t0 = time.perf_counter()
        res = simulate(net, x, options)
        seconds = time.perf_counter() - t0
    n = res.n_images
    fired = res.decision >= 0
    summary: dict[str, Any] = {
        "version": __version__,
        "source": str(args.source),
        "dataset": ctx["dataset"],
        "split": args.split,
        "n_images": n,
        "arch": net.arch,
        "options": {
            "weight_bits": options.weight_bits,
            "time_bits": options.time_bits,
            "time_window": res.grid.window if res.grid is not None else None,
            "time_window_calibrated": ctx["window_rule"] is not None,
            "window_rule": ctx["window_rule"],
            "t_cutoff": options.t_cutoff,
            "jitter": options.jitter,
            "jitter_seed": options.jitter_seed if options.jitter > 0 else None,
            "backend": backend_that_runs(net, options),
        },
        "accuracy": res.accuracy(y),
        "no_decision_rate": res.no_decision_rate(),
        "tied_decision_rate": res.tied_decision_rate(),
        "mean_decision_time": float(res.t_decision[fired].mean()) if fired.any() else math.nan,
        "layers": {
            name: {
                "neurons": int(res.n_neurons[i]),
                "spikes_mean": float(res.spikes_out[:, i].mean()),
                "syn_events_mean": float(res.syn_events[:, i].mean()),
            }
            for i, name in enumerate(res.layer_names)
        },
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else math.inf,
    }
    noise = f" with timing noise σ {options.jitter:g} (seed {options.jitter_seed})" if options.jitter > 0 else ""
    print(
        f"{n} images from {summary['dataset']} ({args.split}){noise}: accuracy {summary['accuracy']:.4f}, "
        f"no decision {summary['no_decision_rate']:.4f}, tied decision {summary['tied_decision_rate']:.4f}, "
        f"mean decision time {summary['mean_decision_time']:.4g}"
    )
    print("spikes per image: " + ", ".join(f"{k} {v['spikes_mean']:.1f}" for k, v in summary["layers"].items()))
    print(f"{seconds:.2f} s, {summary['images_per_s']:.1f} images/s ({summary['options']['backend']} backend)")
    if args.compare:
        torch_dec = np.concatenate(acc["torch_decision"])
        cmp = {
            "decision_agreement": float((torch_dec == res.decision).mean()),
            "torch_accuracy": float((torch_dec == y).mean()),
            "max_abs_dt": dict(zip(res.layer_names, acc["max_abs_dt"])),
            "max_abs_dt_all": max(acc["max_abs_dt"]),
            "max_rel_dt": dict(zip(res.layer_names, acc["max_rel_dt"])),
            "max_rel_dt_all": max(acc["max_rel_dt"]),
            "fire_in_one_only": dict(zip(res.layer_names, acc["only_one"])),
            "torch_dtype": args.compare_dtype,
            "note": compare_note,
        }
        summary["compare"] = cmp
        print(
            f"vs torch ({args.compare_dtype}): decisions agree on {cmp['decision_agreement']:.4f}, torch accuracy "
            f"{cmp['torch_accuracy']:.4f}, max |dt| over neurons firing in both {cmp['max_abs_dt_all']:.3g} "
            f"(relative to max(|t|, 1): {cmp['max_rel_dt_all']:.3g}), "
            f"neurons firing in only one: {sum(acc['only_one'])}"
        )
    if meta is not None:
        summary["config"] = meta.get("config")
        summary["checkpoint_version"] = meta.get("version")
    if args.out:
        write_json(args.out, summary)
    sys.stdout.flush()
    return 0
