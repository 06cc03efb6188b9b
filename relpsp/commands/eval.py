"""``relpsp eval CKPT [--dataset NAME] [--split test]``: accuracy and spike statistics of a checkpoint."""

from __future__ import annotations

import argparse

from relpsp._fileio import json_text

__all__ = ["configure", "run"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file written by relpsp train")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    p.add_argument(
        "--split",
        default="test",
        help="train | test | val; on the dataset the run was trained on, the run's own splits: val is its "
        "held-out validation set (data.val_size) and train excludes it",
    )
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from relpsp.data import canonical_name, load_dataset
    from relpsp.train import data_options, evaluate, load_splits, load_trained, set_threads

    model, cfg, _ = load_trained(args.checkpoint)
    set_threads(0, torch_heavy=cfg.model.kernel == "window")  # as training sets them for this network
    dataset = args.dataset or cfg.data.dataset
    data_dir = args.data_dir or cfg.data.data_dir
    if canonical_name(dataset) == canonical_name(cfg.data.dataset):
        # the run's own splits: its held-out validation set (data.val_size) and its training subset
        splits = load_splits(replace(cfg, data=replace(cfg.data, data_dir=data_dir)))
        if args.split not in splits:
            raise ValueError(
                f"this run has the splits {', '.join(sorted(splits))}, not {args.split!r}"
                + (" (it was trained without data.val_size)" if args.split == "val" else "")
            )
        x, y = splits[args.split]
    else:
        x, y = load_dataset(dataset, args.split, data_dir, **data_options(cfg, dataset))
    res = evaluate(model, x, y, args.batch_size, tau=cfg.train.tau, silent_margin=cfg.train.silent_margin)
    if args.json:
        print(json_text(res))
    else:
        rates = " ".join(f"{r:.3f}" for r in res["firing_rates"])
        print(
            f"{dataset} {args.split}: accuracy {100 * res['accuracy']:.2f}% on {res['n']} samples, "
            f"no output spike {100 * res['no_output_spike_fraction']:.2f}%, "
            f"tied decisions {100 * res['tied_decision_fraction']:.2f}%, "
            f"mean decision time {res['mean_decision_time']:.4f}\nfiring rate per layer: {rates}"
        )
    return 0
