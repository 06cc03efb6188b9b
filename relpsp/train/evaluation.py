"""Accuracy, loss, firing rates and decision statistics of a network on a split, in one process
(``evaluate``) or with the samples shared over the ranks of a data-parallel run (``evaluate_on_ranks``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from relpsp._validate import check_positive_int
from relpsp.config import TrainConfig
from relpsp.functional import decision_margin, first_spike_decode, spike_time_cross_entropy
from relpsp.models import layer_outputs
from relpsp.train.distributed import DistInfo, all_reduce, shard

__all__ = ["MARGIN_QUANTILES", "confusion_counts", "evaluate", "evaluate_on_ranks", "fill_silent", "margin_summary"]


@torch.no_grad()
def evaluate(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1000,
    device: str = "cpu",
    tau: float = TrainConfig.tau,
    silent_margin: float = TrainConfig.silent_margin,
    decisions: list[Tensor] | None = None,
    margins: list[Tensor] | None = None,
) -> dict[str, Any]:
    """Accuracy (no output spike counts as wrong), no-spike fraction, loss (with the training loss's time
    scale ``tau`` and ``silent_margin``, so it compares with the training loss when no penalty term is on:
    ``train_loss`` also holds ``train.silent_penalty``'s and ``train.target_penalty``'s terms), firing rate of every layer
    (fraction of neurons that spike, averaged over samples), mean output spike time of the winner and
    the fraction of samples whose earliest output time several outputs share (``tied_decision_fraction``:
    they are decoded as the lowest class index among them, so a network that ties often can score above
    what it decides; with the windowed neuron, whose times are clamped to the window, this can happen).

    In the loss, an output that never fires counts as firing at the latest output spike of the whole set
    plus ``silent_margin`` (the training loss takes the latest of its batch), so the value does not depend
    on ``batch_size``.

    ``decisions``: a list that receives each batch's decisions (``first_spike_decode``'s ``pred`` on the
    CPU, -1 for no output spike), for ``confusion_counts`` without a second pass over the data.
    ``margins``: a list that receives every sample's ``decision_margin`` (float64, CPU), for
    ``margin_summary``. The model runs in eval mode and is left in the mode it came in."""
    check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
    was_training = model.training
    try:  # evaluated in eval mode; the caller's model is left in the mode it came in
        return _eval_summary(
            _eval_sums(model, x, y, batch_size, device, tau, silent_margin, decisions=decisions, margins=margins)
        )
    finally:
        model.train(was_training)


def confusion_counts(pred: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """``[K, K + 1]`` int64 counts: row ``i`` holds the samples labelled ``i``, column ``j < K`` those decided
    as ``j`` and column ``K`` those with no output spike (``pred == -1``). The diagonal's sum over ``N`` is
    ``evaluate``'s accuracy."""
    if pred.shape != y.shape or pred.dim() != 1:
        raise ValueError(f"pred {tuple(pred.shape)} and y {tuple(y.shape)} must be 1-d and of one length")
    check_positive_int("n_classes", n_classes)
    y = y.to("cpu", torch.int64)
    pred = pred.to("cpu", torch.int64)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); got {int(y.min())}..{int(y.max())}")
    if len(pred) and (int(pred.min()) < -1 or int(pred.max()) >= n_classes):
        raise ValueError(f"decisions must lie in [-1, {n_classes}); got {int(pred.min())}..{int(pred.max())}")
    column = torch.where(pred < 0, n_classes, pred)
    flat = torch.bincount(y * (n_classes + 1) + column, minlength=n_classes * (n_classes + 1))
    return flat.reshape(n_classes, n_classes + 1)


#: the quantiles ``margin_summary`` reports
MARGIN_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9)


def margin_summary(margins: Tensor) -> dict[str, Any]:
    """``decision_margin`` values in short: ``quantiles`` (``"1%"`` ... ``"90%"``, ``MARGIN_QUANTILES``)
    over the samples where the labelled output and another fired (finite margins; ``None`` where there
    are none), their count ``n_both_fired``, and the counts of the other two cases, ``right_silent``
    (the labelled output did not fire: -inf) and ``only_right_fired`` (+inf)."""
    if margins.dim() != 1:
        raise ValueError(f"margins must be 1-d, got shape {tuple(margins.shape)}")
    finite = margins[torch.isfinite(margins)].to(torch.float64)
    levels = torch.tensor(MARGIN_QUANTILES, dtype=torch.float64)
    values = finite.quantile(levels).tolist() if finite.numel() else [None] * len(MARGIN_QUANTILES)
    return {
        "quantiles": {f"{100 * q:g}%": v for q, v in zip(MARGIN_QUANTILES, values, strict=True)},
        "n_both_fired": int(finite.numel()),
        "right_silent": int((margins == -math.inf).sum()),
        "only_right_fired": int((margins == math.inf).sum()),
    }


def _eval_sums(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: str,
    tau: float,
    silent_margin: float,
    reduce_max: Callable[[list[float]], list[float]] | None = None,
    decisions: list[Tensor] | None = None,
    margins: list[Tensor] | None = None,
) -> list[float]:
    """``[n, correct, silent, loss_sum, decision_time_sum, tied, *rate_sums]``: sums, so that ranks can add
    them; ``tied`` counts the samples whose earliest output time is shared by several outputs (decoded as
    the lowest of them, ``first_spike_decode``).
    ``reduce_max`` (every rank calls it once) takes the latest output time over all ranks, so that silent
    outputs get the same time in every rank's share of the loss."""
    model.eval()
    correct = 0
    silent = 0
    tied = 0
    rates = [0.0] * len(model)
    t_win = 0.0
    t_outs: list[Tensor] = []  # kept (a few values per sample) for the loss after the loop
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            xb, yb = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
            outs = layer_outputs(model, xb)
            t_out = outs[-1]
            pred, fired = first_spike_decode(t_out)
            if decisions is not None:
                decisions.append(pred.cpu())
            correct += int((pred == yb).sum())
            silent += int((~fired).sum())
            t_outs.append(t_out.detach().to("cpu", torch.float64))
            rates = [a + float(torch.isfinite(o).float().mean()) * len(yb) for a, o in zip(rates, outs)]
            if bool(fired.any()):
                first = t_out.min(1, keepdim=True).values
                t_win += float(first[fired].sum())
                tied += int(((t_out == first).sum(1) > 1)[fired].sum())
        t_all = torch.cat(t_outs) if t_outs else torch.empty(0, 1, dtype=torch.float64)
        if margins is not None:
            margins.append(decision_margin(t_all, y.cpu()))
        t_filled = fill_silent(t_all, silent_margin, reduce_max or (lambda v: v))
        loss_sum = float(spike_time_cross_entropy(t_filled, y.cpu(), tau=tau, reduction="sum")) if len(y) else 0.0
    return [float(len(y)), float(correct), float(silent), loss_sum, t_win, float(tied), *rates]


def fill_silent(t_out: Tensor, silent_margin: float, reduce_max: Callable[[list[float]], list[float]]) -> Tensor:
    """``t_out`` with silent outputs (+inf) at the latest output time of all of it, taken over every rank by
    ``reduce_max``, plus ``silent_margin`` (0 + margin if nothing fired): what ``spike_time_cross_entropy``
    does within one tensor, made exact for a batch or split shared by several ranks. The filled time
    carries no gradient; fired outputs keep theirs."""
    fired = torch.isfinite(t_out)
    with torch.no_grad():
        finite = t_out[fired]
        t_last = reduce_max([float(finite.max()) if finite.numel() else -math.inf])[0]
    t_late = (t_last if t_last > -math.inf else 0.0) + silent_margin
    return torch.where(fired, t_out, torch.tensor(t_late, dtype=t_out.dtype, device=t_out.device))


def _eval_summary(sums: list[float]) -> dict[str, Any]:
    n_total, correct, silent, loss_sum, t_win, tied = sums[:6]
    n = max(n_total, 1)
    return {
        "accuracy": correct / n,
        "no_output_spike_fraction": silent / n,
        "loss": loss_sum / n,
        "firing_rates": [r / n for r in sums[6:]] if n_total else [],
        "tied_decision_fraction": tied / n,
        # no decision, no winner's time: NaN (null in JSON), as the simulator reports it, not a made-up 0
        "mean_decision_time": t_win / (n_total - silent) if n_total > silent else math.nan,
        "n": round(n_total),
    }


def evaluate_on_ranks(
    model: nn.Sequential, x: Tensor, y: Tensor, batch_size: int, device: str, ctx: DistInfo, train_cfg: TrainConfig
) -> dict[str, Any]:
    """``evaluate`` with the samples split over the ranks and the sums added up."""
    lo, hi = shard(len(y), ctx)

    def reduce_max(values: list[float]) -> list[float]:
        return all_reduce(values, ctx, device, "max")

    sums = _eval_sums(model, x[lo:hi], y[lo:hi], batch_size, device, train_cfg.tau, train_cfg.silent_margin, reduce_max)
    return _eval_summary(all_reduce(sums, ctx, device))
