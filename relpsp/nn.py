"""Stateless modules over the functional API: they own parameters and call one function in forward.

No hidden state and no reset: a plain ``nn.Sequential`` of these is a network. Inputs and outputs are
spike-time tensors (``+inf`` = no spike), except :class:`LatencyEncode`, which takes intensities.
Weights start from N(init_mean * theta / fan_in, (init_std * theta / sqrt(fan_in))^2): a positive mean
so that most neurons fire at the start (zero-mean weights with theta = 1 leave many silent).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from relpsp._validate import (
    check_finite,
    check_finite_positive,
    check_int_at_least,
    check_non_negative,
    check_positive_int,
    check_t_max,
)
from relpsp.alpha import alpha_linear
from relpsp.autograd import BACKENDS
from relpsp.core.dense import W_SUM_MIN
from relpsp.functional import latency_encode, min_time_pool2d, relpsp_conv2d, relpsp_linear
from relpsp.window import standardized_weight, window_conv2d, window_linear

__all__ = [
    "DEFAULT_INIT_MEAN",
    "DEFAULT_INIT_STD",
    "AlphaSpikingLinear",
    "LatencyEncode",
    "MinTimePool2d",
    "SpikingConv2d",
    "SpikingLinear",
    "WindowConv2d",
    "WindowLinear",
]

DEFAULT_INIT_MEAN = 5.0
DEFAULT_INIT_STD = 1.0


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _guard(layer: SpikingLinear | SpikingConv2d) -> str:
    """``extra_repr``'s note of a backward guard other than the default."""
    return "" if layer.w_sum_min == W_SUM_MIN else f", w_sum_min={layer.w_sum_min}"


def _init_weight(weight: Tensor, fan_in: int, theta: float, init_mean: float, init_std: float) -> None:
    check_finite("init_mean", init_mean)
    check_non_negative("init_std", init_std)
    with torch.no_grad():
        weight.normal_(init_mean * theta / fan_in, init_std * theta / math.sqrt(fan_in))


class LatencyEncode(nn.Module):
    """Intensities in [0, 1] -> spike times ``t_max * (1 - x)``; see ``latency_encode``."""

    def __init__(self, t_max: float = 1.0, zero_fires: bool = False) -> None:
        super().__init__()
        self.t_max = check_finite_positive("t_max", t_max)
        if not isinstance(zero_fires, bool):  # bool("false") would be True
            raise ValueError(f"zero_fires must be True or False, got {zero_fires!r}")
        self.zero_fires = zero_fires

    def forward(self, x: Tensor) -> Tensor:
        return latency_encode(x, t_max=self.t_max, zero_fires=self.zero_fires)

    def extra_repr(self) -> str:
        return f"t_max={self.t_max}, zero_fires={self.zero_fires}"


class _DenseLayer(nn.Module):
    """Shared part of the dense layers: checked sizes, threshold and cut-off, and the initialised weight."""

    def __init__(
        self, in_features: int, out_features: int, theta: float, t_max: float, init_mean: float, init_std: float
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.theta = check_finite_positive("theta", theta)
        self.t_max = check_t_max(t_max)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        _init_weight(self.weight, in_features, self.theta, init_mean, init_std)


class SpikingLinear(_DenseLayer):
    """Exact ReL-PSP dense layer: ``[B, in_features]`` -> ``[B, out_features]`` spike times."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        theta: float = 1.0,
        t_max: float = math.inf,
        backend: str = "auto",
        init_mean: float = DEFAULT_INIT_MEAN,
        init_std: float = DEFAULT_INIT_STD,
        w_sum_min: float = W_SUM_MIN,
    ) -> None:
        super().__init__(in_features, out_features, theta, t_max, init_mean, init_std)
        self.backend = _check_backend(backend)
        self.w_sum_min = check_finite_positive("w_sum_min", w_sum_min)

    def forward(self, t_in: Tensor) -> Tensor:
        return relpsp_linear(
            t_in, self.weight, theta=self.theta, t_max=self.t_max, w_sum_min=self.w_sum_min, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, theta={self.theta}, t_max={self.t_max}{_guard(self)}"


class AlphaSpikingLinear(_DenseLayer):
    """Baseline dense layer with a decaying alpha-shaped PSP (``relpsp.alpha``), not the paper's neuron.

    Same interface and initialisation as :class:`SpikingLinear`; ``tau`` is the kernel's time to peak.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        theta: float = 1.0,
        tau: float = 1.0,
        t_max: float = math.inf,
        init_mean: float = DEFAULT_INIT_MEAN,
        init_std: float = DEFAULT_INIT_STD,
    ) -> None:
        super().__init__(in_features, out_features, theta, t_max, init_mean, init_std)
        self.tau = check_finite_positive("tau", tau)

    def forward(self, t_in: Tensor) -> Tensor:
        out = alpha_linear(t_in, self.weight, theta=self.theta, tau=self.tau, t_max=self.t_max)
        assert isinstance(out, Tensor)
        return out

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, theta={self.theta}, tau={self.tau}, t_max={self.t_max}"


def _check_window_edges(t_start: float, t_end: float) -> tuple[float, float]:
    t_start, t_end = check_finite("t_start", t_start), check_finite("t_end", t_end)
    if not t_end > t_start:
        raise ValueError(f"the window must be finite with t_end > t_start, got [{t_start}, {t_end}]")
    return float(t_start), float(t_end)


class _WindowWeights:
    """The windowed layers' weights: the raw ``weight`` itself, or with ``weight_norm`` its standardised form
    (``relpsp.window.standardized_weight``: every row sums to ``init_mean``, a learned per-neuron ``gain``
    starting at ``init_std``, the initial draw's spread)."""

    weight: nn.Parameter
    gain: nn.Parameter | None
    row_sum: float
    theta: float

    def _setup_weight_norm(self, weight_norm: bool, init_mean: float, init_std: float) -> None:
        if not isinstance(weight_norm, bool):
            raise ValueError(f"weight_norm must be True or False, got {weight_norm!r}")
        self.row_sum = float(init_mean)
        if weight_norm and not init_std > 0:
            raise ValueError(f"weight_norm needs init_std > 0 (the initial gain and direction), got {init_std!r}")
        self.gain = nn.Parameter(torch.full((self.weight.shape[0],), float(init_std))) if weight_norm else None

    def effective_weight(self) -> Tensor:
        """The weights the neurons use: ``weight``, or its standardised form with ``weight_norm``."""
        if self.gain is None:
            return self.weight
        return standardized_weight(self.weight, self.gain, self.row_sum)

    def _pass_weight(self) -> Tensor:
        """The weights of this forward pass. ``theta`` scales the falling threshold to theta * (e_l - t),
        which is firing at threshold e_l - t with weights w / theta. It is 1 in the model; only
        training-time spike dropout (``relpsp.train.regularisers.SpikeDropout``) lowers it, for one pass."""
        w = self.effective_weight()
        return w if self.theta == 1.0 else w / self.theta


class WindowLinear(_WindowWeights, _DenseLayer):
    """Dense layer of windowed neurons with a dynamic threshold (``relpsp.window``; a departure from the
    paper): fires in ``[t_start, t_end]``, every input having fired by ``t_start``. ``weight_norm``:
    standardised weights (see ``effective_weight``; a further departure)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        t_start: float,
        t_end: float,
        init_mean: float = DEFAULT_INIT_MEAN,
        init_std: float = DEFAULT_INIT_STD,
        weight_norm: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, 1.0, math.inf, init_mean, init_std)
        self.t_start, self.t_end = _check_window_edges(t_start, t_end)
        self._setup_weight_norm(weight_norm, init_mean, init_std)

    def forward(self, t_in: Tensor) -> Tensor:
        return window_linear(t_in, self._pass_weight(), t_start=self.t_start, t_end=self.t_end)

    def extra_repr(self) -> str:
        norm = ", weight_norm=True" if self.gain is not None else ""
        return f"{self.in_features}, {self.out_features}, window=[{self.t_start}, {self.t_end}]{norm}"


class _ConvLayer(nn.Module):
    """Shared part of the convolutions: checked sizes, stride and padding, threshold, and the initialised
    weight."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        theta: float,
        init_mean: float,
        init_std: float,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        self.padding = check_int_at_least("padding", padding, 0)
        self.theta = theta
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        _init_weight(self.weight, in_channels * kernel_size**2, theta, init_mean, init_std)

    def _sizes(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}"
        )


class SpikingConv2d(_ConvLayer):
    """Exact ReL-PSP convolution: ``[B, C_in, H, W]`` -> ``[B, C_out, H_out, W_out]`` spike times."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        theta: float = 1.0,
        t_max: float = math.inf,
        backend: str = "auto",
        init_mean: float = DEFAULT_INIT_MEAN,
        init_std: float = DEFAULT_INIT_STD,
        w_sum_min: float = W_SUM_MIN,
    ) -> None:
        theta = check_finite_positive("theta", theta)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, theta, init_mean, init_std)
        self.t_max = check_t_max(t_max)
        self.backend = _check_backend(backend)
        self.w_sum_min = check_finite_positive("w_sum_min", w_sum_min)

    def forward(self, t_in: Tensor) -> Tensor:
        return relpsp_conv2d(
            t_in,
            self.weight,
            stride=self.stride,
            padding=self.padding,
            theta=self.theta,
            t_max=self.t_max,
            w_sum_min=self.w_sum_min,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{self._sizes()}, theta={self.theta}, t_max={self.t_max}{_guard(self)}"


class WindowConv2d(_WindowWeights, _ConvLayer):
    """Convolution of windowed neurons with a dynamic threshold (``relpsp.window``; a departure from the
    paper): ``[B, C_in, H, W]`` -> ``[B, C_out, H_out, W_out]`` spike times in ``[t_start, t_end]``.
    ``weight_norm``: standardised weights (see ``effective_weight``; a further departure)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        t_start: float,
        t_end: float,
        stride: int = 1,
        padding: int = 0,
        init_mean: float = DEFAULT_INIT_MEAN,
        init_std: float = DEFAULT_INIT_STD,
        weight_norm: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 1.0, init_mean, init_std)
        self.t_start, self.t_end = _check_window_edges(t_start, t_end)
        self._setup_weight_norm(weight_norm, init_mean, init_std)

    def forward(self, t_in: Tensor) -> Tensor:
        w = self._pass_weight()
        return window_conv2d(t_in, w, stride=self.stride, padding=self.padding, t_start=self.t_start, t_end=self.t_end)

    def extra_repr(self) -> str:
        norm = ", weight_norm=True" if self.gain is not None else ""
        return f"{self._sizes()}, window=[{self.t_start}, {self.t_end}]{norm}"


class MinTimePool2d(nn.Module):
    """Earliest spike of each window wins; see ``min_time_pool2d``."""

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else check_positive_int("stride", stride)

    def forward(self, t: Tensor) -> Tensor:
        return min_time_pool2d(t, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
