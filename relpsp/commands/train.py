"""``relpsp train [CONFIG.toml] [flags]``: train a network; flags override the config file's fields."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

__all__ = ["TRAIN_BACKENDS", "configure", "resolve_config", "run"]

#: the same names as ``relpsp.autograd.BACKENDS`` (kept literal so that ``--help`` does not import torch; a test
#: checks that the two agree)
TRAIN_BACKENDS = ("auto", "torch", "numba", "triton")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        nargs="?",
        help="TOML experiment file, or the name of one shipped with relpsp (--list-configs); default: MNIST 784-800-10",
    )
    p.add_argument("--list-configs", action="store_true", help="list the experiments shipped with relpsp and exit")
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the settings this command would train with (config file, --set and flags resolved) as an"
        " experiment file, every key with its meaning, and exit",
    )
    p.add_argument(
        "--dataset",
        help="mnist | mnist-pkl | fashion-mnist | caltech-face-motorbike | yinyang | cifar10, or your own FILE.npz"
        " (docs/DATA.md)",
    )
    p.add_argument("--arch", help="architecture string, e.g. 784-800-10 or 16C5-P2-32C5-P2-800-128-10")
    p.add_argument("--epochs", type=int, help="training epochs (train.epochs)")
    p.add_argument("--batch-size", type=int, help="training batch size (train.batch_size)")
    p.add_argument("--lr", type=float, help="learning rate (train.lr)")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, help="seed of the initial weights, data order and augmentation (train.seed)")
    seed.add_argument(
        "--seeds",
        metavar="LIST",
        help="train once per seed, e.g. 0,1,2 or 0-5, each into OUT-seed<S>, and print the summary over them",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="with --seeds: how many seeds train at once, each in its own process printing into"
        " OUT-seed<S>.log (default 1: one after another, here)",
    )
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--backend",
        choices=TRAIN_BACKENDS,
        help="kernel backend (auto: numba on the CPU, triton on CUDA when installed, else torch)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for the kernels (0: all cores)")
    p.add_argument("--data-dir", help="dataset folder (default: $RELPSP_DATA or ~/.cache/relpsp)")
    p.add_argument(
        "--init-from",
        metavar="CKPT_OR_RUN",
        help="start from this checkpoint's (or run folder's) network instead of random weights: fine-tuning "
        "(train.init_from; the same arch, input shape and kernel; a fresh optimizer and schedule)",
    )
    p.add_argument(
        "--out",
        help="run folder (default: runs/<config or dataset-arch>-seed<seed>); with --seeds, the folders' prefix"
        " (default runs/<config or dataset-arch>)",
    )
    folder = p.add_mutually_exclusive_group()
    folder.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.ckpt if present")
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="delete a run already in OUT (checkpoint, metrics, results) and start again; without it, and "
        "without --resume, an OUT that holds a run is refused",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. --set model.t_max=4 --set train.optimizer=adamw (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")


def resolve_config(args: argparse.Namespace):
    """Defaults <- TOML file <- --set <- named flags; the input shape follows the dataset unless set."""
    from relpsp.config import config_from_dict, find_config, load_toml, parse_override
    from relpsp.data import canonical_name, dataset_info, is_npz_name

    raw: dict = load_toml(find_config(args.config)) if args.config else {}
    overrides: dict = {"model": {}, "data": {}, "train": {}}
    for item in args.set:
        m = re.fullmatch(r"(model|data|train)\.(\w+)=(.*)", item)
        if not m:
            raise ValueError(f"--set expects SECTION.KEY=VALUE with SECTION model, data or train; got {item!r}")
        overrides[m[1]][m[2]] = parse_override(m[1], m[2], m[3])
    flags = {
        ("data", "dataset"): args.dataset,
        ("data", "data_dir"): args.data_dir,
        ("model", "arch"): args.arch,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("train", "lr"): args.lr,
        ("train", "seed"): args.seed,
        ("train", "device"): args.device,
        ("train", "backend"): args.backend,
        ("train", "threads"): args.threads,
        ("train", "init_from"): args.init_from,
    }
    for (section, key), v in flags.items():
        if v is not None:
            overrides[section][key] = v
    cfg = config_from_dict(raw)
    cfg = config_from_dict(overrides, base=cfg)
    # the registry's own name ("yin-yang" -> "yinyang"), so that one dataset is one experiment everywhere
    name = canonical_name(cfg.data.dataset)
    if is_npz_name(name):  # your own archive: by its absolute path, so eval and resume find it anywhere
        name = os.path.abspath(os.path.expanduser(name))
    cfg = config_from_dict({"data": {"dataset": name}}, base=cfg)
    if cfg.train.init_from is not None and cfg.train.init_from.strip():  # found from any folder on --resume
        cfg = config_from_dict(
            {"train": {"init_from": os.path.abspath(os.path.expanduser(cfg.train.init_from))}}, base=cfg
        )
    shape_given = "input_shape" in raw.get("model", {}) or "input_shape" in overrides["model"]
    if not shape_given:
        from relpsp.train import data_options

        info = dataset_info(cfg.data.dataset, **data_options(cfg))
        cfg = config_from_dict({"model": {"input_shape": list(info.input_shape)}}, base=cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Train. Under ``torchrun`` (``WORLD_SIZE > 1``) this joins the process group first (gloo on CPU,
    nccl on CUDA) and trains data-parallel; rank 0 alone prints and writes the run folder."""
    from relpsp.train import dist_info, fit, init_distributed
    from relpsp.train.validation import validate_config

    if args.list_configs:
        from relpsp.config import packaged_configs

        for name, summary in packaged_configs().items():
            print(f"{name:42s} {summary}")
        return 0
    cfg = resolve_config(args)
    if args.show_config:
        from relpsp.config import config_to_toml

        print(config_to_toml(cfg), end="")
        return 0
    validate_config(cfg)  # a bad setting is refused before the header line names a run (fit checks again)
    if args.jobs is not None and args.seeds is None:
        raise ValueError("--jobs goes with --seeds (how many of the seeds train at once)")
    if args.out:
        out = Path(args.out)
    else:
        from relpsp.data import is_npz_name

        dataset = Path(cfg.data.dataset).stem if is_npz_name(cfg.data.dataset) else cfg.data.dataset
        stem = Path(args.config).stem if args.config else f"{dataset}-{cfg.model.arch}"
        out = Path("runs") / (stem if args.seeds is not None else f"{stem}-seed{cfg.train.seed}")
    if args.seeds is not None:
        from relpsp.commands.seeds import parse_seeds, train_seeds

        seeds = parse_seeds(args.seeds)
        if os.environ.get("WORLD_SIZE", "").strip() not in ("", "0", "1"):
            raise ValueError("--seeds trains separate runs; under torchrun train one seed (--seed) per launch")
        jobs = 1 if args.jobs is None else args.jobs
        return train_seeds(
            cfg, out, seeds, jobs=jobs, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
    started_group = init_distributed(cfg.train.device)
    try:
        ctx = dist_info()
        if ctx.is_main:
            procs = f", {ctx.world_size} processes" if ctx.world_size > 1 else ""
            epochs = f"{cfg.train.epochs} epoch" + ("s" if cfg.train.epochs != 1 else "")
            print(f"relpsp train: {cfg.data.dataset} {cfg.model.arch}, {epochs}{procs} -> {out}")
        res = fit(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
        if ctx.is_main:
            print(
                f"test accuracy {100 * res['test_accuracy']:.2f}% "
                f"(no output spike: {100 * res['test_no_output_spike_fraction']:.2f}%), "
                f"wall time {res['wall_time_s']:.0f} s; results in {out / 'results.json'}"
            )
    finally:
        if started_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
