"""Checks at the public boundary: each raises ``ValueError`` naming the argument and what is wrong."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "check_finite",
    "check_finite_positive",
    "check_float_tensor",
    "check_int_at_least",
    "check_int_pair",
    "check_intensities",
    "check_kernel_fits",
    "check_non_negative",
    "check_positive_int",
    "check_spike_times",
    "check_t_max",
]


def check_float_tensor(name: str, x: object, ndims: tuple[int, ...]) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    return x


def check_intensities(x: Tensor, subject: str) -> None:
    """Intensities lie in [0, 1] (min and max propagate NaN, so NaN is refused too); ``subject`` opens the
    message, e.g. "x must hold intensities"."""
    if x.numel() and not bool((x.min() >= 0) & (x.max() <= 1)):
        raise ValueError(f"{subject} in [0, 1] (no NaN); normalise the data first")


def check_spike_times(name: str, t: Tensor) -> None:
    """Spike times are >= 0 or +inf (no spike); NaN and negative times are refused."""
    # One reduction on the happy path: min() propagates NaN, so `min >= 0` fails on NaN and negatives.
    if t.numel() == 0 or bool(t.min() >= 0):
        return
    bad = ~(t >= 0)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        what = f"{n_nan} NaN" if n_nan else f"{int(bad.sum())} negative"
        raise ValueError(f"{name} holds {what} value(s); spike times must be >= 0 or +inf (no spike)")


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not (isinstance(value, Tensor) and value.numel() == 1):
            raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_finite(name: str, value: float) -> float:
    v = _as_float(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def check_finite_positive(name: str, value: float) -> float:
    v = _as_float(name, value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def check_non_negative(name: str, value: float) -> float:
    v = _as_float(name, value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_t_max(value: float) -> float:
    v = _as_float("t_max", value)
    if math.isnan(v) or v <= 0:
        raise ValueError(f"t_max must be > 0 (or inf for no cut-off), got {value!r}")
    return v


def check_positive_int(name: str, value: object) -> int:
    return check_int_at_least(name, value, 1)


def check_int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` (an integer, NumPy's included, not a bool) of at least ``minimum``, as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_int_pair(name: str, v: object, minimum: int) -> tuple[int, int]:
    """``v`` (an integer, NumPy's included, or a pair of them, each >= ``minimum``) as a pair of ints."""

    def integer(x: object) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    p = (v, v) if integer(v) else (tuple(v) if isinstance(v, (tuple, list)) else ())
    if len(p) != 2 or not all(integer(x) and x >= minimum for x in p):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(p[0]), int(p[1])


def check_kernel_fits(kernel: tuple[int, int], height: int, width: int) -> None:
    """A convolution or pooling ``kernel`` (kh, kw) is at least 1x1 and fits its (padded) input."""
    if min(kernel) < 1:
        raise ValueError(f"weight has an empty {tuple(kernel)} kernel; kernels need at least 1x1")
    if height < kernel[0] or width < kernel[1]:
        raise ValueError(f"kernel {tuple(kernel)} is larger than the (padded) input {height}x{width}")
