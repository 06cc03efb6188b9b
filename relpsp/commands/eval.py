"""``relpsp eval CKPT [--dataset NAME] [--split test]``: accuracy and spike statistics of a checkpoint."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from relpsp._fileio import json_text
from relpsp.commands import add_threads_argument

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["configure", "run"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file written by relpsp train, or its run folder")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    p.add_argument(
        "--split",
        default="test",
        help="train | test | val; on the dataset the run was trained on, the run's own splits: val is its "
        "held-out validation set (data.val_size) and train excludes it",
    )
    p.add_argument("--data-dir", help="dataset folder (default: the run's, else $RELPSP_DATA or ~/.cache/relpsp)")
    p.add_argument("--batch-size", type=int, default=1000, help="samples per evaluation batch (default 1000)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument(
        "--per-class",
        action="store_true",
        help="also the confusion matrix (rows: label, named where the dataset names its classes; columns: "
        "decision, then no output spike), each class's accuracy and the indices of the wrongly decided samples, "
        "with their files for a dataset of image files (Caltech) (JSON: key per_class)",
    )
    p.add_argument(
        "--margins",
        action="store_true",
        help="also the decision margins: how long before the earliest other output the labelled one spikes "
        "(negative: decided wrong), as quantiles beside the loss's tau (JSON: key margins)",
    )
    add_threads_argument(p, 0)


def run(args: argparse.Namespace) -> int:

    import torch

    from relpsp.arch import DenseSpec, layer_label, parse_arch
    from relpsp.commands import check_threads, checkpoint_of, use_threads
    from relpsp.commands.simulate import is_nir_file
    from relpsp.data import canonical_name, dataset_info, load_dataset, sample_files
    from relpsp.train import data_options, evaluate, load_trained, margin_summary, run_split

    check_threads(args.threads)
    ckpt = checkpoint_of(args.checkpoint)  # a run folder: its checkpoint
    if ckpt.is_file() and is_nir_file(ckpt):
        raise ValueError(f"{ckpt} is a NIR file; relpsp eval reads checkpoints: run it with relpsp simulate")
    model, cfg, _ = load_trained(ckpt)
    use_threads(args.threads, torch_heavy=cfg.model.kernel == "window")  # as training sets them for this network
    dataset = args.dataset or cfg.data.dataset
    data_dir = args.data_dir or cfg.data.data_dir
    if canonical_name(dataset) == canonical_name(cfg.data.dataset):
        # the run's own splits: its held-out validation set (data.val_size) and its training subset
        x, y, (source_split, source_index) = run_split(cfg, args.split, data_dir)
    else:
        x, y = load_dataset(dataset, args.split, data_dir, **data_options(cfg, dataset))
        source_split, source_index = args.split, torch.arange(len(y))
    shape = tuple(cfg.model.input_shape)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{dataset} has inputs of shape {tuple(x.shape[1:])}, but the network takes {shape} "
            f"(it was trained on {cfg.data.dataset})"
        )
    decisions: list[Tensor] | None = [] if args.per_class else None
    margins: list[Tensor] | None = [] if args.margins else None
    res = evaluate(
        model,
        x,
        y,
        args.batch_size,
        tau=cfg.train.tau,
        silent_margin=cfg.train.silent_margin,
        decisions=decisions,
        margins=margins,
    )
    if margins is not None:
        res["margins"] = {**margin_summary(torch.cat(margins)), "tau": cfg.train.tau}
    specs = parse_arch(cfg.model.arch, cfg.model.input_shape)
    res["layers"] = [layer_label(spec) for spec in specs]  # build_model makes one module, one rate, per spec
    if decisions is not None:  # the arch ends with a dense output layer, one neuron per class
        output = specs[-1]
        assert isinstance(output, DenseSpec)  # parse_arch refuses any other last layer
        res["per_class"] = _per_class(decisions, output.n_out, y, source_index)
        names = dataset_info(dataset, **data_options(cfg, dataset)).class_names
        res["per_class"]["class_names"] = list(names) if len(names) == output.n_out else None
        res["per_class"]["wrong_indices_in"] = f"{canonical_name(dataset)} {source_split}"
        files = sample_files(dataset, source_split, data_dir, **data_options(cfg, dataset))
        res["per_class"]["wrong_files"] = [files[i] for i in res["per_class"]["wrong"]] if files else None
    if args.json:
        print(json_text(res))
    else:
        rates = ", ".join(f"{name} {r:.3f}" for name, r in zip(res["layers"], res["firing_rates"], strict=True))
        print(
            f"{dataset} {args.split}: accuracy {100 * res['accuracy']:.2f}% on {res['n']} samples, "
            f"no output spike {100 * res['no_output_spike_fraction']:.2f}%, "
            f"tied decisions {100 * res['tied_decision_fraction']:.2f}%, "
            f"mean decision time {res['mean_decision_time']:.4f}\nfiring rate per layer: {rates}"
        )
        if args.per_class:
            print(_per_class_text(res["per_class"]))
        if margins is not None:
            print(_margins_text(res["margins"]))
    return 0


def _per_class(decisions: list[Tensor], k: int, y: Tensor, source_index: Tensor) -> dict[str, Any]:
    """Confusion counts, per-class accuracy (None for a class without samples) and the wrongly decided
    samples' indices in the dataset's own split (``source_index`` maps positions in ``y`` to them)."""
    import torch

    from relpsp.train import confusion_counts

    pred = torch.cat(decisions) if decisions else torch.empty(0, dtype=torch.long)
    conf = confusion_counts(pred, y, k)
    totals = conf.sum(1).tolist()
    return {
        "confusion": conf.tolist(),
        "accuracy": [conf[i, i].item() / n if n else None for i, n in enumerate(totals)],
        "wrong": sorted(source_index[(pred != y.to(pred.device)).nonzero().flatten().cpu()].tolist()),
    }


def _margins_text(m: dict[str, Any]) -> str:
    q = m["quantiles"]
    values = ", ".join(f"{k} {v:.4g}" for k, v in q.items()) if m["n_both_fired"] else "none"
    return (
        f"decision margin (earliest other output's time minus the labelled one's; the loss's tau {m['tau']:g}) "
        f"over the {m['n_both_fired']} samples where both fired: {values}\n"
        f"labelled output silent: {m['right_silent']}; only the labelled output fired: {m['only_right_fired']}"
    )


def _per_class_text(pc: dict[str, Any]) -> str:
    conf = pc["confusion"]
    k = len(conf)
    width = max(6, len(str(max(max(row) for row in conf))) + 2)
    names = pc.get("class_names")
    labels = [f"{i} {n}" if names and n != str(i) else str(i) for i, n in enumerate(names or [""] * k)]
    first = max(5, *(len(label) + 1 for label in labels))
    head = f"{'label':<{first}}" + "".join(f"{j:>{width}}" for j in range(k)) + f"{'none':>{width}}  accuracy"
    lines = ["confusion (rows: label; columns: decided class, then none = no output spike):", head]
    for label, row, acc in zip(labels, conf, pc["accuracy"], strict=True):
        cells = "".join(f"{c:>{width}}" for c in row)
        lines.append(f"{label:<{first}}{cells}  " + (f"{100 * acc:7.2f}%" if acc is not None else "       -"))
    shown = [str(i) for i in pc["wrong"][:50]]
    if pc.get("wrong_files"):  # a dataset of image files: each index with its file
        shown = [f"{i} ({f})" for i, f in zip(shown, pc["wrong_files"], strict=False)]
    more = f" ... ({len(pc['wrong'])} in all)" if len(pc["wrong"]) > len(shown) else ""
    where = f"indices in {pc['wrong_indices_in']}"
    lines.append(f"wrong samples ({len(pc['wrong'])}; {where}): " + (" ".join(shown) + more if shown else "none"))
    return "\n".join(lines)
