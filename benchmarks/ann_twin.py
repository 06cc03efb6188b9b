"""The ReLU twin of a relpsp experiment: how far the same network, not spiking, gets on the same budget.

    python -m benchmarks.ann_twin [CONFIG] [--seeds 0,1,2] [--weight-decay WD] [--dropout P] [--epochs N]
                                  [--lr LR] [--train-size N] [--set SECTION.KEY=VALUE ...] [--threads N]
                                  [--out FILE.json]

CONFIG is an experiment file or the name of a shipped one (default ``mnist_cnn_flat800_b64``, the faithful
MNIST CNN row), resolved and validated as ``relpsp train`` resolves it. Its architecture string is built as a conventional network: each convolution is
``nn.Conv2d`` (same kernel, stride, padding) + ReLU, each ``P<k>`` max-pooling, each dense layer
``nn.Linear`` + ReLU (plain logits at the output), with PyTorch's default initialisation; the network
sees the intensities x in [0, 1] where the spiking one sees the spike times t = 1 - x. It trains with
the experiment's data and splits, sample order (``epoch_order``), augmentation (``augment_batch``), optimizer
(``make_optimizer``), learning rate, cosine schedule per step, batch and epochs, and the cross-entropy
of the logits. Where the spiking run had spike dropout on its dense layers' inputs, the twin has
``nn.Dropout`` at the same rate before each ``nn.Linear`` (``--dropout`` changes it); ``--weight-decay``
replaces the experiment's, since a decay tuned for spiking weights need not suit the twin. Settings with
no counterpart here (the silent and target penalties, spike dropout on convolutions, label smoothing,
weight averaging, the gradient cap, the neuron's own settings) are left out, and the program names those
that the experiment sets.

Prints and stores the environment, each seed's test accuracy (and validation accuracy where the
experiment holds a validation split), training accuracy of the last epoch and wall time, and over the
seeds the mean, the sample standard deviation and the test decisions right. A reference for the spiking
rows, not a result of the spiking model (docs/RESULTS.md, protocol (70) in docs/PROTOCOLS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.common import add_threads_argument, environment, refuse_bad_output_file, write_json
from relpsp.arch import ConvSpec, DenseSpec, EncodeSpec, FlattenSpec, PoolSpec, parse_arch
from relpsp.commands.train import configure as configure_train
from relpsp.commands.train import resolve_config
from relpsp.config import Config, TrainConfig
from relpsp.train import load_splits, lr_at, make_optimizer, set_threads
from relpsp.train.inputs import augment_batch, epoch_order
from relpsp.train.validation import validate_config

DEFAULT_CONFIG = "mnist_cnn_flat800_b64"
#: training settings of the spiking run that the twin does not apply
LEFT_OUT = ("silent_penalty", "target_penalty", "spike_dropout_conv", "label_smoothing", "ema_decay", "grad_clip")


def relu_twin(arch: str, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Sequential:
    """``arch`` (relpsp notation) as a ReLU network: Conv2d + ReLU, MaxPool2d, Flatten, [Dropout] +
    Linear + ReLU, and a last Linear giving logits."""
    specs = parse_arch(arch, input_shape)
    dense = [i for i, s in enumerate(specs) if isinstance(s, DenseSpec)]
    layers: list[nn.Module] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, EncodeSpec):
            continue
        if isinstance(spec, ConvSpec):
            layers += [nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.padding), nn.ReLU()]
        elif isinstance(spec, PoolSpec):
            layers.append(nn.MaxPool2d(spec.kernel))
        elif isinstance(spec, FlattenSpec):
            layers.append(nn.Flatten())
        elif isinstance(spec, DenseSpec):
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(spec.n_in, spec.n_out))
            if i != dense[-1]:
                layers.append(nn.ReLU())
        else:  # pragma: no cover - parse_arch makes no other spec
            raise TypeError(f"no ReLU twin for {spec!r}")
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> tuple[int, int]:
    """(decisions right, samples): the class of the largest logit, ties to the lowest index."""
    model.eval()
    right = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    return right, len(y)


def train_twin(cfg: Config, dropout: float, log=print) -> dict:
    """One seed (``cfg.train.seed``) of the twin, trained as ``relpsp train`` trains the spiking network."""
    t = cfg.train
    torch.manual_seed(t.seed)
    splits = load_splits(cfg)
    x_tr, y_tr = splits["train"]
    model = relu_twin(cfg.model.arch, tuple(cfg.model.input_shape), dropout)
    opt = make_optimizer(cfg, model.parameters())
    steps_per_epoch = math.ceil(len(y_tr) / t.batch_size)
    total = steps_per_epoch * t.epochs
    loss_fn = nn.CrossEntropyLoss()
    history = []
    t0 = time.perf_counter()
    for epoch in range(t.epochs):
        model.train()
        order = epoch_order(t.seed, epoch, len(y_tr))
        right = seen = 0
        for step in range(steps_per_epoch):
            idx = order[step * t.batch_size : (step + 1) * t.batch_size]
            xb = augment_batch(x_tr[idx], cfg, epoch, step)
            yb = y_tr[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps_per_epoch + step, total)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            right += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        row = {"epoch": epoch + 1, "train_accuracy": right / seen}
        row["test_right"], n_test = accuracy(model, *splits["test"])
        row["test_accuracy"] = row["test_right"] / n_test
        if "val" in splits:
            row["val_right"], n_val = accuracy(model, *splits["val"])
            row["val_accuracy"] = row["val_right"] / n_val
        history.append(row)
        log(
            f"seed {t.seed} epoch {epoch + 1}/{t.epochs}: train {row['train_accuracy']:.4f}  "
            f"test {row['test_accuracy']:.4f}" + (f"  val {row['val_accuracy']:.4f}" if "val_accuracy" in row else "")
        )
    last = history[-1]
    return {
        "seed": t.seed,
        "test_accuracy": last["test_accuracy"],
        "test_right": last["test_right"],
        "test_samples": len(splits["test"][1]),
        "val_accuracy": last.get("val_accuracy"),
        "val_right": last.get("val_right"),
        "val_samples": len(splits["val"][1]) if "val" in splits else None,
        "train_accuracy_last_epoch": last["train_accuracy"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": time.perf_counter() - t0,
        "history": history,
    }


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of the test accuracy (percent) and the decisions right."""
    acc = [100 * r["test_accuracy"] for r in runs]
    return {
        "seeds": [r["seed"] for r in runs],
        "test_accuracy_mean": statistics.fmean(acc),
        "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
        "test_right": sum(r["test_right"] for r in runs),
        "test_samples": sum(r["test_samples"] for r in runs),
        "val_right": sum(r["val_right"] for r in runs) if all(r["val_right"] is not None for r in runs) else None,
        "val_samples": sum(r["val_samples"] for r in runs) if all(r["val_samples"] is not None for r in runs) else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"experiment (default {DEFAULT_CONFIG})")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, trained one after another")
    ap.add_argument("--weight-decay", type=float, help="replaces train.weight_decay")
    ap.add_argument("--dropout", type=float, help="dropout before each Linear (default: train.spike_dropout)")
    ap.add_argument("--epochs", type=int, help="replaces train.epochs")
    ap.add_argument("--lr", type=float, help="replaces train.lr")
    ap.add_argument("--train-size", type=int, help="replaces data.train_size (a seeded subset; for quick checks)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field as relpsp train --set does, e.g. --set model.arch=8C5-P2-2 (repeatable)",
    )
    ap.add_argument("--out", help="JSON file for the results")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    refuse_bad_output_file(ap, args.out)
    # resolved as `relpsp train CONFIG [--epochs N] [--lr LR] [--set ...]` resolves it, and validated as it is
    train_argv = [args.config]
    train_argv += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    train_argv += ["--lr", repr(args.lr)] if args.lr is not None else []
    train_argv += ["--set", f"train.weight_decay={args.weight_decay!r}"] if args.weight_decay is not None else []
    train_argv += ["--set", f"data.train_size={args.train_size}"] if args.train_size is not None else []
    for item in args.set:
        train_argv += ["--set", item]
    train_parser = argparse.ArgumentParser(prog="relpsp train", add_help=False)
    configure_train(train_parser)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        cfg = resolve_config(train_parser.parse_args(train_argv))
        validate_config(cfg)
    except ValueError as e:
        ap.error(str(e))
    dropout = cfg.train.spike_dropout if args.dropout is None else args.dropout
    if not 0 <= dropout < 1:
        ap.error(f"--dropout must be in [0, 1), got {dropout}")
    set_threads(args.threads, torch_heavy=True)
    env = environment("cpu")
    print("environment:", env)
    settings = {
        "config": args.config,
        "arch": cfg.model.arch,
        "dataset": cfg.data.dataset,
        "optimizer": cfg.train.optimizer,
        "lr": cfg.train.lr,
        "lr_schedule": cfg.train.lr_schedule,
        "weight_decay": cfg.train.weight_decay,
        "batch_size": cfg.train.batch_size,
        "epochs": cfg.train.epochs,
        "dropout": dropout,
        "augment": cfg.data.augment,
        "train_size": cfg.data.train_size,
        "val_size": cfg.data.val_size,
        "input_shape": list(cfg.model.input_shape),
        "image_size": list(cfg.data.image_size),
        "set": list(args.set),
    }
    print("settings:", settings)
    left_out = [k for k in LEFT_OUT if getattr(cfg.train, k) != getattr(TrainConfig(), k)]
    if cfg.model.kernel != "relpsp":
        left_out.append(f"model.kernel = {cfg.model.kernel!r}")
    if left_out:
        print("left out (no counterpart in a ReLU network):", ", ".join(left_out))
    settings["left_out"] = left_out
    runs = [train_twin(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=s)), dropout) for s in seeds]
    summary = summarise(runs)
    sd = summary["test_accuracy_sd"]
    print(
        f"ReLU twin of {args.config}: {summary['test_accuracy_mean']:.3f}"
        + (f" ± {sd:.2f}" if sd is not None else "")
        + f" % over seeds {', '.join(map(str, seeds))} ("
        + ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in runs)
        + f"); test decisions right: {summary['test_right']:,} of {summary['test_samples']:,}"
        + (
            f"; validation right: {summary['val_right']:,} of {summary['val_samples']:,}"
            if summary["val_right"] is not None
            else ""
        )
    )
    if args.out:
        write_json(
            args.out,
            {"benchmark": "ann_twin", "environment": env, "settings": settings, "runs": runs, "summary": summary},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
