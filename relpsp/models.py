"""Networks from the paper's architecture strings, e.g. ``"784-800-10"`` or
``"16C5-P2-32C5-P2-800-128-10"`` (see ``relpsp.arch`` for the notation).

``build_model`` returns a plain ``nn.Sequential`` whose module ``k`` implements spec ``k`` of
``relpsp.arch.parse_arch``: it maps intensities in [0, 1] to output spike times ``[B, n_classes]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from relpsp._validate import check_finite_positive
from relpsp.arch import ConvSpec, DenseSpec, EncodeSpec, FlattenSpec, PoolSpec, parse_arch
from relpsp.autograd import BACKENDS
from relpsp.config import ModelConfig
from relpsp.core.dense import W_SUM_MIN
from relpsp.nn import (
    DEFAULT_INIT_MEAN,
    DEFAULT_INIT_STD,
    AlphaSpikingLinear,
    LatencyEncode,
    MinTimePool2d,
    SpikingConv2d,
    SpikingLinear,
    WindowConv2d,
    WindowLinear,
)

__all__ = [
    "KERNELS",
    "MAX_WEIGHTS",
    "build_model",
    "center_rows",
    "count_weights",
    "layer_outputs",
    "load_model_arrays",
    "model_arrays",
    "model_from_config",
]


#: Architectures with more weights than this are refused: 2^30 float32 weights are 4 GiB (12 GiB more for
#: Adam's state), far beyond what the exact per-neuron search trains in reasonable time; a typo such as
#: "784-8000000-10" should fail with a message, not with an out-of-memory error.
MAX_WEIGHTS = 2**30

#: Neurons: the paper's ReL-PSP one; a decaying alpha kernel as a baseline (dense only); and ReL-PSP in
#: per-layer time windows with a dynamic threshold (``relpsp.window``, a departure from the paper).
KERNELS = ("relpsp", "alpha", "window")


def count_weights(specs: list) -> int:
    """Number of weights of a parsed architecture (dense and conv layers)."""
    n = 0
    for s in specs:
        if isinstance(s, DenseSpec):
            n += s.n_in * s.n_out
        elif isinstance(s, ConvSpec):
            n += s.c_out * s.c_in * s.kernel**2
    return n


def build_model(
    arch: str,
    input_shape: tuple[int, ...] | None = None,
    *,
    theta: float = 1.0,
    t_max: float = math.inf,
    t_in: float = 1.0,
    zero_fires: bool = False,
    backend: str = "auto",
    init_mean: float = DEFAULT_INIT_MEAN,
    init_std: float = DEFAULT_INIT_STD,
    kernel: str = "relpsp",
    kernel_tau: float = 1.0,
    window: float = 1.0,
    init_centered: bool = False,
    weight_norm: bool = False,
    w_sum_min: float = W_SUM_MIN,
) -> nn.Sequential:
    """Build the network for ``arch``. ``input_shape`` is ``(N,)`` or ``(C, H, W)``; for an MLP it may be
    omitted (taken from the first number). ``t_in``: the input coding window; ``t_max``: cut-off of every
    spiking layer (inf = none). ``kernel``: ``"relpsp"`` (the paper's neuron) or ``"alpha"`` (the decaying
    baseline of ``relpsp.alpha``, time to peak ``kernel_tau``; dense layers only) or ``"window"`` (the
    windowed neuron of ``relpsp.window``: spiking layer l fires in ``[t_in + (l-1) window, t_in + l window]``;
    ``theta`` and ``t_max`` do not apply). ``init_centered``: shift each neuron's initial weights so that
    they sum to exactly ``init_mean * theta`` (see ``center_rows``). ``weight_norm`` (window kernel only):
    standardised weights, every neuron's summing to ``init_mean`` throughout training
    (``relpsp.window.standardized_weight``). ``w_sum_min`` (ReL-PSP kernel only): the backward's lower clamp
    of each firing neuron's causal weight sum W_j (``relpsp.core.dense``); the forward is unchanged."""
    kw: dict[str, Any] = dict(
        theta=theta, t_max=t_max, backend=backend, init_mean=init_mean, init_std=init_std, w_sum_min=w_sum_min
    )
    check_finite_positive("t_in", t_in)  # the coding window (LatencyEncode calls it t_max)
    if backend not in BACKENDS:  # also for the alpha and window kernels, which do not use it
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    check_finite_positive("kernel_tau", kernel_tau)
    check_finite_positive("window", window)
    if weight_norm and kernel != "window":
        raise ValueError(f"weight_norm applies to kernel 'window' only, got kernel {kernel!r}")
    if window != 1.0 and kernel != "window":
        raise ValueError(f"window (the layers' time window) applies to kernel 'window' only, got kernel {kernel!r}")
    if kernel_tau != 1.0 and kernel != "alpha":
        raise ValueError(f"kernel_tau (the PSP's time to peak) applies to kernel 'alpha' only, got kernel {kernel!r}")
    check_finite_positive("w_sum_min", w_sum_min)
    if w_sum_min != W_SUM_MIN and kernel != "relpsp":
        raise ValueError(
            f"w_sum_min (the STDBP backward's guard) applies to kernel 'relpsp' only, got kernel {kernel!r}"
        )
    if kernel == "window" and math.isfinite(t_max):
        raise ValueError("kernel 'window' has its own time windows; t_max (a cut-off) does not apply, leave it inf")
    modules: list[nn.Module] = []
    n_spiking = 0
    specs = parse_arch(arch, input_shape)
    n_weights = count_weights(specs)
    if n_weights > MAX_WEIGHTS:
        raise ValueError(
            f"arch {arch!r} has {n_weights:,} weights, more than the limit of {MAX_WEIGHTS:,} "
            "(relpsp.models.MAX_WEIGHTS); check the layer sizes"
        )
    for spec in specs:
        if isinstance(spec, EncodeSpec):
            modules.append(LatencyEncode(t_in, zero_fires))
        elif isinstance(spec, FlattenSpec):
            modules.append(nn.Flatten())
        elif isinstance(spec, (DenseSpec, ConvSpec)) and kernel == "window":
            n_spiking += 1
            start, end = t_in + (n_spiking - 1) * window, t_in + n_spiking * window
            init: dict[str, Any] = dict(init_mean=init_mean, init_std=init_std, weight_norm=weight_norm)
            if isinstance(spec, DenseSpec):
                modules.append(WindowLinear(spec.n_in, spec.n_out, t_start=start, t_end=end, **init))
            else:
                modules.append(
                    WindowConv2d(
                        spec.c_in,
                        spec.c_out,
                        spec.kernel,
                        stride=spec.stride,
                        padding=spec.padding,
                        t_start=start,
                        t_end=end,
                        **init,
                    )
                )
        elif isinstance(spec, DenseSpec) and kernel == "alpha":
            alpha_kw = dict(theta=theta, t_max=t_max, init_mean=init_mean, init_std=init_std)
            modules.append(AlphaSpikingLinear(spec.n_in, spec.n_out, tau=kernel_tau, **alpha_kw))
        elif isinstance(spec, DenseSpec):
            modules.append(SpikingLinear(spec.n_in, spec.n_out, **kw))
        elif isinstance(spec, ConvSpec) and kernel == "alpha":
            raise ValueError(f"kernel 'alpha' supports dense layers only; arch {arch!r} has convolutions")
        elif isinstance(spec, ConvSpec):
            modules.append(
                SpikingConv2d(spec.c_in, spec.c_out, spec.kernel, stride=spec.stride, padding=spec.padding, **kw)
            )
        elif isinstance(spec, PoolSpec):
            modules.append(MinTimePool2d(spec.kernel))
    model = nn.Sequential(*modules)
    if init_centered:
        center_rows(model, init_mean)
    return model


def center_rows(model: nn.Sequential, init_mean: float) -> None:
    """Shift every neuron's weights by one constant so that they sum to exactly ``init_mean * theta``
    (the layer's own threshold, as in the initial draw; 1 for the windowed layers).

    With weights drawn i.i.d., W_j = sum_i w_ji varies from neuron to neuron with the spread of the draw;
    for the windowed neuron that spread becomes a fixed offset of each neuron's spike time, which pushes
    many neurons of a deep network onto an edge of their window (held there, no gradient). Centring keeps
    the random part (the sample-dependent signal) and removes the offsets."""
    with torch.no_grad():
        for m in model:
            w, theta = getattr(m, "weight", None), getattr(m, "theta", None)
            if not isinstance(w, nn.Parameter):
                continue
            if not isinstance(theta, float):
                raise TypeError(f"{type(m).__name__} has weights but no float threshold theta")
            rows = w.view(w.shape[0], -1)
            rows += (init_mean * theta - rows.sum(1, keepdim=True)) / rows.shape[1]


def layer_outputs(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """Spike times after every module of ``model`` (the first is the encoded input)."""
    outs = []
    h = x
    for m in model:
        h = m(h)
        outs.append(h)
    return outs


def model_from_config(cfg: ModelConfig, backend: str = "auto") -> nn.Sequential:
    """``build_model`` with the settings of a config's ``[model]`` section."""
    return build_model(
        cfg.arch,
        cfg.input_shape,
        theta=cfg.theta,
        t_max=cfg.t_max,
        t_in=cfg.t_in,
        zero_fires=cfg.zero_fires,
        backend=backend,
        init_mean=cfg.init_mean,
        init_std=cfg.init_std,
        kernel=cfg.kernel,
        kernel_tau=cfg.kernel_tau,
        window=cfg.window,
        init_centered=cfg.init_centered,
        weight_norm=cfg.weight_norm,
        w_sum_min=cfg.w_sum_min,
    )


def model_arrays(model: nn.Sequential, prefix: str = "model.") -> dict[str, np.ndarray]:
    """Weights as float32 NumPy arrays named ``prefix + k`` (default ``"model.{k}.weight"``, the checkpoint
    layout); ``load_model_arrays`` with the same prefix reads them back."""
    return {f"{prefix}{k}": v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}


def load_model_arrays(model: nn.Sequential, arrays: dict[str, np.ndarray], prefix: str = "model.") -> None:
    """Copy the ``prefix + k`` arrays (default ``"model.*"``) into ``model``; raise ``ValueError`` on missing or
    mis-shaped ones, naming the array as stored."""
    state = model.state_dict()
    for k, v in state.items():
        name = f"{prefix}{k}"
        if name not in arrays:
            raise ValueError(f"checkpoint has no array {name!r} for this architecture")
        a = np.asarray(arrays[name])
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"checkpoint array {name!r} has shape {a.shape}, the model needs {tuple(v.shape)}")
        if a.dtype.kind not in "fiu" or a.dtype.itemsize > 8:
            raise ValueError(f"checkpoint array {name!r} has dtype {a.dtype}; weights must be numeric, 64 bits at most")
        if not np.isfinite(a).all():
            raise ValueError(
                f"checkpoint array {name!r} holds NaN or infinite weights: the run diverged or the file is bad"
            )
        with torch.no_grad():
            v.copy_(torch.from_numpy(np.asarray(a, dtype=np.float64)))  # any byte order; exact for float32
