"""What training may add to the plain STDBP step, each attached from outside the stateless network:
weight averaging, the penalties that give silent neurons a gradient (forward hooks), spike dropout and
timing noise (forward hooks, seeded per step)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from relpsp.train.inputs import step_key

__all__ = ["SilentPenalty", "SpikeDropout", "SpikeJitter", "WeightAverage"]


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging): ``update`` sets every parameter
    of ``self.model`` to ``decay * avg + (1 - decay) * current`` and copies the buffers. The average
    starts as a copy of the model it is built from; about ``1 / (1 - decay)`` recent steps carry weight."""

    def __init__(self, model: nn.Sequential, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Sequential) -> None:
        for avg, cur in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur, 1.0 - self.decay)
        for buf, src in zip(self.model.buffers(), model.buffers(), strict=True):
            buf.copy_(src)


class SilentPenalty:
    """Sums ``silent_neuron_penalty`` over the spiking layers of one forward pass, read through forward
    hooks (the modules stay stateless). ``t_end`` of a layer: the latest spike it fired in the batch
    (capped by its cut-off), so silent neurons are pushed to fire within the range the others use; a layer
    that fired nothing in the batch takes one time unit after its latest input spike (capped alike), and a
    layer that received no spike has no term.

    With ``target_only`` only the output layer is read, and of its neurons only the correct output of
    each sample (the others are passed as having fired): the term then acts only where a sample's correct
    output is silent, the case in which the spike-time loss sends the output layer no gradient. A network
    of windowed neurons (``relpsp.window``, where every neuron fires) takes the target-only form alone: its
    term is ``window_held_penalty``, on each sample's correct output where it is held at its window's end,
    the windowed neuron's state with no gradient."""

    def __init__(self, model: nn.Sequential, *, target_only: bool = False) -> None:
        from relpsp.nn import SpikingConv2d, SpikingLinear, WindowLinear

        self.records: list[tuple[Any, Tensor, Tensor]] = []
        layers: list[nn.Module] = [m for m in model if isinstance(m, (SpikingLinear, SpikingConv2d))]
        if target_only:
            last = list(model)[-1]
            if not isinstance(last, (SpikingLinear, WindowLinear)):
                raise ValueError("train.target_penalty needs a network that ends in a spiking dense layer")
            layers = [last]
        self.target_only = target_only
        self.handles = [m.register_forward_hook(self._record) for m in layers]

    def _record(self, mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if mod.training and torch.is_grad_enabled():  # evaluation passes would only hold memory
            self.records.append((mod, inp[0], out))

    def __call__(
        self, reduce_max: Callable[[list[float]], list[float]] | None = None, target: Tensor | None = None
    ) -> Tensor:
        """The penalty *summed* over the samples of this batch (the caller divides by the global batch
        size). ``reduce_max`` makes the latest spike times global over the ranks of a distributed run, so
        every rank uses the horizon a single process would. ``target``: the labels (``target_only``)."""
        from relpsp.functional import silent_neuron_penalty
        from relpsp.nn import WindowLinear
        from relpsp.window import window_held_penalty

        if self.target_only and target is None:
            raise ValueError("the target penalty needs the batch's labels")
        latest: list[float] = []  # per layer: latest output spike, latest input spike (-inf: none)
        with torch.no_grad():
            for _mod, t_in, t_out in self.records:
                for t in (t_out, t_in):
                    finite = t[torch.isfinite(t)]
                    latest.append(float(finite.max()) if finite.numel() else -math.inf)
        if reduce_max is not None:
            latest = reduce_max(latest)
        total = torch.zeros(())
        for k, (mod, t_in, t_out) in enumerate(self.records):
            if self.target_only and target is not None:  # every other output counts as fired (time 0)
                is_target = torch.nn.functional.one_hot(target, t_out.shape[1]).bool()
                t_out = torch.where(is_target, t_out.detach(), t_out.new_zeros(()))
            if isinstance(mod, WindowLinear):  # only as the output layer, target_only
                w = mod.effective_weight()
                held = window_held_penalty(t_in, w, t_out, t_start=mod.t_start, t_end=mod.t_end)
                total = total + held * t_out.shape[0]
                continue
            last_out, last_in = latest[2 * k], latest[2 * k + 1]
            if last_out > -math.inf:
                t_end = min(last_out, mod.t_max)
            elif last_in > -math.inf:
                t_end = min(last_in + 1.0, mod.t_max)
            else:
                continue
            kw = {"stride": mod.stride, "padding": mod.padding} if t_in.dim() == 4 else {}
            mean = silent_neuron_penalty(t_in, mod.weight, t_out, t_end=t_end, theta=mod.theta, **kw)
            total = total + mean * t_out.shape[0]
        self.records.clear()
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _rows_of_global_draw(
    draw: Callable[..., Tensor],
    generator: torch.Generator,
    rows: tuple[int, int, int] | None,
    like: Tensor,
    what: str,
) -> Tensor:
    """``draw`` (``torch.rand`` or ``torch.randn``) over the whole global batch of ``like``'s per-sample
    shape and dtype, cut to the rows ``lo:hi`` of ``rows = (lo, hi, n_global)`` that this process holds
    (None: all of ``like``), on ``like``'s device: every process draws what one process would."""
    lo, hi, n = rows if rows is not None else (0, len(like), len(like))
    if hi - lo != len(like):
        raise RuntimeError(f"{what} expected rows {lo}:{hi} of the batch, got {len(like)}")
    return draw((n, *like.shape[1:]), generator=generator, dtype=like.dtype)[lo:hi].to(like.device)


class SpikeDropout:
    """Training-time dropout for spike times, attached to every ReL-PSP dense layer (rate ``p``) and, with
    ``p_conv > 0``, every convolution layer (rate ``p_conv``; the first one's input is the encoded image,
    so its pixels' spikes are dropped) through hooks (the
    network itself, its checkpoint, export and inference are unchanged). In a forward pass in training
    mode each input spike of the layer is deleted (its time set to +inf) with probability ``p``, and the
    layer's threshold is scaled by ``1 - p`` for that pass: firing at ``sum_causal w_i (t - t_i) = theta``
    with weights ``w / (1 - p)`` is firing at threshold ``theta * (1 - p)`` with ``w``, so at any time the
    expected potential over the masks equals that of the full input at evaluation (the analogue of
    inverted dropout; the firing time itself is not preserved exactly, as it is not linear). The windowed
    layers (``relpsp.window``, a departure) are hooked the same way: a deleted input never spiked (it
    leaves both sums of the closed form), and their falling threshold ``e_l - t`` is scaled by ``1 - p``. The masks
    come from a generator reseeded before every step from (seed, epoch, step), so a run and its resume
    draw the same masks; each layer draws the mask of the whole global batch and keeps this process's
    rows, so a data-parallel run drops the spikes that a single process would."""

    def __init__(self, model: nn.Sequential, p: float, p_conv: float = 0.0) -> None:
        from relpsp.nn import SpikingConv2d, SpikingLinear, WindowConv2d, WindowLinear

        dense, conv = (SpikingLinear, WindowLinear), (SpikingConv2d, WindowConv2d)
        self.p = p
        self.p_conv = p_conv
        if p > 0 and not any(isinstance(m, dense) for m in model):
            raise ValueError("train.spike_dropout needs a network with a spiking dense layer")
        if p_conv > 0 and not any(isinstance(m, conv) for m in model):
            raise ValueError("train.spike_dropout_conv needs a network with a spiking convolution layer")

        def rate(m: nn.Module) -> float:
            return p if isinstance(m, dense) else p_conv

        # in forward order, so one generator draws the masks layer by layer as the pass reaches them
        self.layers = [m for m in model if isinstance(m, (*dense, *conv)) and rate(m) > 0]
        if not self.layers:
            raise ValueError("spike dropout needs a rate > 0")
        self.rate = {id(m): rate(m) for m in self.layers}
        self.theta = {id(m): m.theta for m in self.layers}
        self.generator: torch.Generator | None = None
        self.rows: tuple[int, int, int] | None = None
        self.handles = []
        for m in self.layers:
            self.handles.append(m.register_forward_pre_hook(self._drop))
            self.handles.append(m.register_forward_hook(self._restore))

    def reseed(self, seed: int, epoch: int, step: int, device: str, rows: tuple[int, int, int] | None = None) -> None:
        """Seed the masks of one step; ``rows = (lo, hi, n_global)``: this process holds rows lo:hi of
        a global batch of n_global (None: the whole batch)."""
        # always a CPU generator (the masks are moved to the device): CPU and CUDA generators give different
        # numbers for one seed, and a run may be resumed on another device type
        del device
        self.generator = torch.Generator()
        self.rows = rows
        # the packed key of the first runs (its last slot held a rank, always 0 there); one-to-one while
        # epoch * 10_007 + step stays below the seed's radix 1_000_003
        legacy = (seed * 1_000_003 + epoch * 10_007 + step) * 1_009 + 0x5D10
        in_range = step < 10_007 and epoch * 10_007 + step < 1_000_003
        self.generator.manual_seed(step_key("spike-dropout", legacy, in_range, seed, epoch, step, 0))

    def _drop(self, mod: Any, args: tuple[Tensor, ...]):
        if not mod.training or self.generator is None:
            return None
        t_in = args[0]
        p = self.rate[id(mod)]
        u = _rows_of_global_draw(torch.rand, self.generator, self.rows, t_in, "spike dropout")
        mod.theta = self.theta[id(mod)] * (1.0 - p)
        return (torch.where(u < p, torch.full_like(t_in, math.inf), t_in), *args[1:])

    def _restore(self, mod: Any, _args: Any, _out: Any) -> None:
        mod.theta = self.theta[id(mod)]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.layers:
            m.theta = self.theta[id(m)]


class SpikeJitter:
    """Training-time timing noise (``train.spike_jitter`` = sigma), attached through forward hooks to the
    input encoder and every ReL-PSP layer (the network, its checkpoint, export and inference are
    unchanged). In a forward pass in training mode every spike the encoder or a ReL-PSP layer emits is
    moved by its own N(0, sigma^2) draw and clamped at 0, as ``relpsp.sim``'s ``jitter`` moves them at
    inference (pooling and flattening pass the moved times on; whether a neuron fires is decided before
    its spike moves). The noise is a constant of the pass, so the gradient flows through a moved time to
    the layer that emitted it unchanged (a time clamped at 0 passes none). The draws come from a
    generator reseeded before every step from (seed, epoch, step); each hook draws the noise of the whole
    global batch and keeps this process's rows, so a resumed or data-parallel run moves the spikes a
    single uninterrupted process would."""

    def __init__(self, model: nn.Sequential, sigma: float) -> None:
        from relpsp.nn import LatencyEncode, SpikingConv2d, SpikingLinear

        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"spike jitter needs a finite sigma > 0, got {sigma}")
        self.sigma = sigma
        # in forward order, so one generator draws layer by layer as the pass reaches them
        self.modules = [m for m in model if isinstance(m, (LatencyEncode, SpikingLinear, SpikingConv2d))]
        if not any(isinstance(m, (SpikingLinear, SpikingConv2d)) for m in self.modules):
            raise ValueError("train.spike_jitter needs a network of ReL-PSP layers (model.kernel 'relpsp')")
        self.generator: torch.Generator | None = None
        self.rows: tuple[int, int, int] | None = None
        self.handles = [m.register_forward_hook(self._move) for m in self.modules]

    def reseed(self, seed: int, epoch: int, step: int, rows: tuple[int, int, int] | None = None) -> None:
        """Seed the noise of one step; ``rows = (lo, hi, n_global)`` as in ``SpikeDropout.reseed``."""
        self.generator = torch.Generator()
        self.rows = rows
        self.generator.manual_seed(step_key("spike-jitter", -1, False, seed, epoch, step))

    def _move(self, mod: Any, _args: Any, t_out: Tensor) -> Tensor | None:
        if not mod.training or self.generator is None:
            return None
        noise = _rows_of_global_draw(torch.randn, self.generator, self.rows, t_out, "spike jitter")
        fired = torch.isfinite(t_out)
        moved = torch.clamp(torch.where(fired, t_out, 0.0) + self.sigma * noise, min=0.0)
        return torch.where(fired, moved, t_out)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
