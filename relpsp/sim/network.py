"""The simulator's own description of a network: a tuple of layers with float64 NumPy weights.

Written independently of the training code (no torch): a checkpoint is read with ``relpsp.checkpoint``
and its architecture string with ``relpsp.arch``, and a NIR graph is read by ``relpsp.export.nir``.
Every spiking layer holds the ReL-PSP neuron of Zhang et al. (IEEE TNNLS 2021, arXiv:2003.11837):

    V_j(t) = sum_i w_ji * max(0, t - t_i),   t_j = first t with V_j(t) >= theta,

one spike per neuron (``+inf`` = no spike), and a spike later than the layer's ``t_max`` is dropped.
The input is latency coded: an intensity ``x`` in [0, 1] spikes at ``t_in * (1 - x)``; ``x = 0`` spikes
at ``t_in`` when ``zero_fires`` and never otherwise.

Windowed networks (``SimNetwork.window = T``; the departure of ``relpsp.window``, after Wei et al.,
ICCV 2023): spiking layer l (1-based) fires only in its window ``[s_l, e_l] = [t_in + (l - 1) T,
t_in + l T]``, against a threshold that falls as ``e_l - t``, and every neuron fires exactly once (at
``e_l`` if its potential never meets the threshold). Its layers keep ``theta = 1`` and ``t_max = inf``,
which do not apply. A checkpoint trained with standardised weights (``model.weight_norm``) is read as
the weights its neurons use (``standardized_rows``).

Shapes: a layer maps one image's spike times ``(C, H, W)`` or ``(N,)`` to the next; weights are
``[N_out, N_in]`` (dense) and ``[C_out, C_in, k, k]`` (conv), as in the checkpoint.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relpsp.arch import ConvSpec, DenseSpec, EncodeSpec, FlattenSpec, PoolSpec, parse_arch
from relpsp.checkpoint import load_checkpoint
from relpsp.config import ModelConfig, config_from_dict

__all__ = [
    "SimConv",
    "SimDense",
    "SimFlatten",
    "SimLayer",
    "SimNetwork",
    "SimPool",
    "layer_output_shape",
    "network_from_arrays",
    "network_from_checkpoint",
    "standardized_rows",
]

#: Lower bound on a raw row's spread in ``standardized_rows``, as in training (float32 weights).
_NORM_FLOOR = float(np.finfo(np.float32).tiny) ** 0.5


def _check_theta_t_max(theta: float, t_max: float) -> None:
    if not (math.isfinite(theta) and theta > 0):
        raise ValueError(f"theta must be a finite positive number, got {theta!r}")
    if math.isnan(t_max) or t_max <= 0:
        raise ValueError(f"t_max must be > 0 (or inf for no cut-off), got {t_max!r}")


def _as_weight(weight: Any, ndim: int, what: str) -> np.ndarray:
    raw = np.asarray(weight)
    if raw.dtype.kind not in "fiu":
        raise ValueError(f"{what} weight must hold real numbers, got dtype {raw.dtype}")
    w = np.ascontiguousarray(raw, dtype=np.float64)
    if w.ndim != ndim:
        raise ValueError(f"{what} weight must have {ndim} dimensions, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{what} weight holds NaN or infinite values")
    return w


@dataclass(frozen=True, eq=False)
class SimDense:
    """Dense ReL-PSP layer: ``weight [N_out, N_in]``."""

    weight: np.ndarray
    theta: float = 1.0
    t_max: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_weight(self.weight, 2, "dense"))
        object.__setattr__(self, "theta", float(self.theta))
        object.__setattr__(self, "t_max", float(self.t_max))
        _check_theta_t_max(self.theta, self.t_max)


@dataclass(frozen=True, eq=False)
class SimConv:
    """ReL-PSP convolution: ``weight [C_out, C_in, k, k]``; padded positions never spike."""

    weight: np.ndarray
    stride: int = 1
    padding: int = 0
    theta: float = 1.0
    t_max: float = math.inf

    def __post_init__(self) -> None:
        w = _as_weight(self.weight, 4, "conv")
        if w.shape[2] != w.shape[3]:
            raise ValueError(f"conv weight must have a square kernel, got shape {w.shape}")
        object.__setattr__(self, "weight", w)
        if isinstance(self.stride, bool) or int(self.stride) != self.stride or self.stride < 1:
            raise ValueError(f"conv stride must be an integer >= 1, got {self.stride!r}")
        if isinstance(self.padding, bool) or int(self.padding) != self.padding or self.padding < 0:
            raise ValueError(f"conv padding must be an integer >= 0, got {self.padding!r}")
        object.__setattr__(self, "stride", int(self.stride))
        object.__setattr__(self, "padding", int(self.padding))
        object.__setattr__(self, "theta", float(self.theta))
        object.__setattr__(self, "t_max", float(self.t_max))
        _check_theta_t_max(self.theta, self.t_max)

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])


@dataclass(frozen=True)
class SimPool:
    """Min-time pooling (max-pooling of activity): the earliest spike of each window; no neurons."""

    kernel: int
    stride: int | None = None  # None: equal to kernel

    def __post_init__(self) -> None:
        if isinstance(self.kernel, bool) or int(self.kernel) != self.kernel or self.kernel < 1:
            raise ValueError(f"pool kernel must be an integer >= 1, got {self.kernel!r}")
        s = self.kernel if self.stride is None else self.stride
        if isinstance(s, bool) or int(s) != s or s < 1:
            raise ValueError(f"pool stride must be an integer >= 1, got {self.stride!r}")
        object.__setattr__(self, "kernel", int(self.kernel))
        object.__setattr__(self, "stride", int(s))

    @property
    def step(self) -> int:
        """The stride as an int (``stride`` after construction; the kernel when it was None)."""
        return self.kernel if self.stride is None else int(self.stride)


@dataclass(frozen=True)
class SimFlatten:
    """``(C, H, W)`` -> ``(C * H * W,)`` in row-major order (as ``torch.flatten``)."""


SimLayer = SimDense | SimConv | SimPool | SimFlatten


def layer_output_shape(layer: SimLayer, shape: tuple[int, ...], index: int = 0) -> tuple[int, ...]:
    """Spike-time shape after ``layer`` for input ``shape``; ``ValueError`` (naming layer ``index``) if
    they do not fit."""
    where = f"layer {index} ({type(layer).__name__})"
    if isinstance(layer, SimDense):
        if len(shape) != 1 or shape[0] != layer.weight.shape[1]:
            raise ValueError(
                f"{where}: weight {layer.weight.shape} needs a flat input of {layer.weight.shape[1]}, got {shape}"
            )
        return (layer.weight.shape[0],)
    if isinstance(layer, SimConv):
        if len(shape) != 3 or shape[0] != layer.weight.shape[1]:
            raise ValueError(
                f"{where}: weight {layer.weight.shape} needs a (C={layer.weight.shape[1]}, H, W) input, got {shape}"
            )
        h, w = shape[1] + 2 * layer.padding, shape[2] + 2 * layer.padding
        k = layer.kernel
        if h < k or w < k:
            raise ValueError(f"{where}: kernel {k} is larger than the padded input {h}x{w}")
        return (layer.weight.shape[0], (h - k) // layer.stride + 1, (w - k) // layer.stride + 1)
    if isinstance(layer, SimPool):
        if len(shape) != 3 or shape[1] < layer.kernel or shape[2] < layer.kernel:
            raise ValueError(f"{where}: kernel {layer.kernel} does not fit the input {shape}")
        s = layer.step
        return (shape[0], (shape[1] - layer.kernel) // s + 1, (shape[2] - layer.kernel) // s + 1)
    if isinstance(layer, SimFlatten):
        return (math.prod(shape),)
    raise ValueError(f"{where}: unknown layer type {type(layer).__name__}")


@dataclass(frozen=True, eq=False)
class SimNetwork:
    """A feed-forward network of ReL-PSP (or windowed) neurons as the simulator sees it.

    ``input_shape``: ``(N,)`` or ``(C, H, W)`` of the intensities; ``t_in``: coding window;
    ``zero_fires``: whether intensity 0 spikes (at ``t_in``). ``window``: None for ReL-PSP neurons, or the
    length T of every spiking layer's window for the windowed neuron (see the module docstring; its
    layers must keep ``theta = 1`` and ``t_max = inf``). ``shapes[i]`` is the spike-time shape after layer
    ``i - 1`` (``shapes[0]`` the encoded input). ``names`` label ``["input", *layers]``.
    """

    layers: tuple[SimLayer, ...]
    input_shape: tuple[int, ...]
    t_in: float = 1.0
    zero_fires: bool = False
    arch: str = ""
    window: float | None = None
    shapes: tuple[tuple[int, ...], ...] = field(init=False)
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("a network needs at least one layer")
        shape = tuple(int(d) for d in self.input_shape)
        if len(shape) not in (1, 3) or any(d < 1 for d in shape):
            raise ValueError(f"input_shape must be (N,) or (C, H, W) with positive sizes, got {self.input_shape}")
        if not (math.isfinite(self.t_in) and self.t_in > 0):
            raise ValueError(f"t_in must be a finite positive number, got {self.t_in!r}")
        if self.window is not None:
            if isinstance(self.window, bool) or not (math.isfinite(self.window) and self.window > 0):
                raise ValueError(f"window must be a finite positive number (or None), got {self.window!r}")
            for i, layer in enumerate(layers):
                if isinstance(layer, (SimDense, SimConv)) and (layer.theta != 1.0 or layer.t_max != math.inf):
                    raise ValueError(
                        f"layer {i}: a windowed network's neurons have no theta or t_max of their own (the window"
                        f" sets both); keep theta = 1 and t_max = inf, got {layer.theta} and {layer.t_max}"
                    )
            object.__setattr__(self, "window", float(self.window))
        shapes = [shape]
        for i, layer in enumerate(layers):
            shape = layer_output_shape(layer, shape, i)
            shapes.append(shape)
        if len(shape) != 1 or not isinstance(layers[-1], SimDense):
            raise ValueError(f"the last layer must be dense (the output neurons), got {type(layers[-1]).__name__}")
        if shape[0] < 1:
            raise ValueError("the last layer has no output neurons")
        counters: dict[str, int] = {}
        names = ["input"]
        for layer in layers:
            base = {SimDense: "dense", SimConv: "conv", SimPool: "pool", SimFlatten: "flatten"}[type(layer)]
            counters[base] = counters.get(base, 0) + 1
            names.append(f"{base}{counters[base]}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_shape", shapes[0])
        object.__setattr__(self, "t_in", float(self.t_in))
        object.__setattr__(self, "zero_fires", bool(self.zero_fires))
        object.__setattr__(self, "shapes", tuple(shapes))
        object.__setattr__(self, "names", tuple(names))

    @property
    def n_classes(self) -> int:
        return self.shapes[-1][0]

    def spiking_layers(self) -> list[int]:
        """Indices (into ``layers``) of the layers with neurons (dense and conv)."""
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, (SimDense, SimConv))]

    def layer_window(self, index: int) -> tuple[float, float]:
        """``(s, e)``: the window of spiking layer ``index`` (into ``layers``) of a windowed network."""
        if self.window is None:
            raise ValueError("layer_window: this network has ReL-PSP neurons, not windowed ones")
        spiking = self.spiking_layers()
        if index not in spiking:
            raise ValueError(f"layer {index} has no neurons (spiking layers: {spiking})")
        l_1 = spiking.index(index)  # l - 1
        return self.t_in + l_1 * self.window, self.t_in + (l_1 + 1) * self.window

    @property
    def frame_end(self) -> float | None:
        """The end of the last layer's window (the time by which every neuron has fired), or None for
        ReL-PSP neurons."""
        if self.window is None:
            return None
        return self.t_in + len(self.spiking_layers()) * self.window


def standardized_rows(raw: Any, gain: Any, row_sum: float) -> np.ndarray:
    """Weight standardisation in float64 (``model.weight_norm``; the training code's is
    ``relpsp.window.standardized_weight``): each row (neuron) of ``raw [N_out, ...]`` becomes
    ``row_sum / n + gain_j * v_j / |v_j|``, with ``v_j`` the row minus its mean and ``n`` its length."""
    raw = np.asarray(raw, dtype=np.float64)
    gain = np.asarray(gain, dtype=np.float64)
    if raw.ndim < 2 or gain.shape != raw.shape[:1]:
        raise ValueError(f"expected raw [N_out, ...] and gain [N_out], got shapes {raw.shape} and {gain.shape}")
    if not (np.isfinite(raw).all() and np.isfinite(gain).all() and math.isfinite(row_sum)):
        raise ValueError("standardised weights need finite raw weights, gains and row sum")
    rows = raw.reshape(raw.shape[0], -1)
    centred = rows - rows.mean(1, keepdims=True)
    norm = np.maximum(np.sqrt((centred * centred).sum(1, keepdims=True)), _NORM_FLOOR)
    flat = rows.max(1, keepdims=True) == rows.min(1, keepdims=True)  # equal weights: no direction, as in training
    direction = np.where(flat, 0.0, centred / norm)
    return (row_sum / rows.shape[1] + gain[:, None] * direction).reshape(raw.shape)


def _model_value(model: dict[str, Any], key: str, default: Any) -> Any:
    v = model.get(key, default)
    if isinstance(v, str) and v.lower() in ("inf", "infinity"):
        return math.inf
    return v


def _window_settings(model: dict[str, Any]) -> tuple[float, bool, float]:
    """``(window, weight_norm, init_mean)`` of a windowed network's ``[model]`` section."""
    try:
        window = float(_model_value(model, "window", ModelConfig.window))
        row_sum = float(_model_value(model, "init_mean", ModelConfig.init_mean))
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model config's window or init_mean is not a number: {e}") from e
    weight_norm = model.get("weight_norm", False)
    if not isinstance(weight_norm, (bool, np.bool_)):
        raise ValueError(f"the model config's weight_norm must be true or false, got {weight_norm!r}")
    return window, bool(weight_norm), row_sum


def network_from_arrays(arrays: dict[str, np.ndarray], model: dict[str, Any]) -> SimNetwork:
    """Build from checkpoint arrays (``"model.{k}.weight"``, and ``"model.{k}.gain"`` with standardised
    weights) and the ``[model]`` config section (a dict with ``arch``, ``input_shape``, ``theta``,
    ``t_max``, ``t_in``, ``zero_fires``; for the windowed neuron ``kernel = "window"``, ``window``,
    ``weight_norm`` and ``init_mean``)."""
    if "arch" not in model:
        raise ValueError("the model config has no 'arch'")
    kernel = model.get("kernel", "relpsp")
    if kernel not in ("relpsp", "window"):
        raise ValueError(
            f"this network uses the {kernel!r} PSP kernel; the event-driven simulator and the cost model handle"
            " ReL-PSP and windowed networks only, the NIR export ReL-PSP networks only"
        )
    window, weight_norm, row_sum = _window_settings(model) if kernel == "window" else (None, False, 0.0)
    arch = str(model["arch"])
    shape = model.get("input_shape")
    try:
        input_shape = tuple(int(d) for d in shape) if shape is not None else None
        theta = float(_model_value(model, "theta", 1.0))
        t_max = float(_model_value(model, "t_max", math.inf))
        t_in = float(_model_value(model, "t_in", 1.0))
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model config's input_shape, theta, t_max or t_in is not a number: {e}") from e
    if window is not None:  # the windows set both; training's windowed layers ignore the config's values too
        theta, t_max = 1.0, math.inf
    zero_fires = model.get("zero_fires", False)
    if not isinstance(zero_fires, (bool, np.bool_)):
        raise ValueError(f"the model config's zero_fires must be true or false, got {zero_fires!r}")
    specs = parse_arch(arch, input_shape)
    layers: list[SimLayer] = []
    enc_shape: tuple[int, ...] = ()
    for k, spec in enumerate(specs):
        if isinstance(spec, EncodeSpec):
            enc_shape = spec.shape
            continue
        if isinstance(spec, FlattenSpec):
            layers.append(SimFlatten())
        elif isinstance(spec, PoolSpec):
            layers.append(SimPool(spec.kernel))
        else:
            name = f"model.{k}.weight"
            if name not in arrays:
                raise ValueError(f"checkpoint has no array {name!r} for architecture {arch!r}")
            w = np.asarray(arrays[name])
            if weight_norm:
                gain_name = f"model.{k}.gain"
                if gain_name not in arrays:
                    raise ValueError(f"checkpoint has no array {gain_name!r}, which standardised weights need")
                gain = np.asarray(arrays[gain_name])
                if gain.shape != w.shape[:1]:
                    raise ValueError(f"{gain_name} has shape {gain.shape}, {name} needs {w.shape[:1]}")
                w = standardized_rows(w, gain, row_sum)
            if isinstance(spec, DenseSpec):
                if w.shape != (spec.n_out, spec.n_in):
                    raise ValueError(f"{name} has shape {w.shape}, {arch!r} needs {(spec.n_out, spec.n_in)}")
                layers.append(SimDense(w, theta=theta, t_max=t_max))
            elif isinstance(spec, ConvSpec):
                want = (spec.c_out, spec.c_in, spec.kernel, spec.kernel)
                if w.shape != want:
                    raise ValueError(f"{name} has shape {w.shape}, {arch!r} needs {want}")
                layers.append(SimConv(w, stride=spec.stride, padding=spec.padding, theta=theta, t_max=t_max))
    # A flat MLP input may be given as (1, 28, 28) in the config; the simulator flattens it itself.
    return SimNetwork(tuple(layers), enc_shape, t_in=t_in, zero_fires=bool(zero_fires), arch=arch, window=window)


def network_from_checkpoint(path: str | os.PathLike) -> tuple[SimNetwork, dict[str, Any]]:
    """Read a checkpoint written by the trainer; returns ``(network, meta)``."""
    arrays, meta = load_checkpoint(path)
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError(f"{path}: the checkpoint meta has no config.model section")
    try:  # the meta is not covered by the checksums of the arrays: check every section's types
        config_from_dict(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: the checkpoint's config is not valid: {e}") from e
    return network_from_arrays(arrays, cfg["model"]), meta
