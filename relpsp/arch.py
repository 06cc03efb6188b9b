"""Architecture strings in the paper's notation, parsed to a list of layer specs (no torch needed).

Tokens are joined by ``-``:

- ``N``: a dense layer of N neurons. In an architecture without convolutions the first number is the
  input size (``784-800-10``: 784 inputs, 800 hidden, 10 outputs) and must match the input shape.
- ``<C>C<k>`` (optionally ``s<stride>`` and ``p<padding>``): a convolution with C output channels and a
  k x k kernel, e.g. ``16C5`` or ``64C3p1``.
- ``P<k>``: min-time pooling with a k x k window and stride k.

The list always starts with an :class:`EncodeSpec` (latency coding of intensities); a
:class:`FlattenSpec` is inserted before the first dense layer when the input is not flat. The position
of each spec equals the index of its module in ``relpsp.models.build_model``'s ``nn.Sequential``, so
the weight of spec ``k`` is stored as ``"{k}.weight"``. ``relpsp.sim`` uses this module too.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

__all__ = [
    "ConvSpec",
    "DenseSpec",
    "EncodeSpec",
    "FlattenSpec",
    "LayerSpec",
    "PoolSpec",
    "layer_label",
    "parse_arch",
    "weight_layers",
]


@dataclass(frozen=True)
class EncodeSpec:
    """The latency coding of the input, of ``shape`` ``(N,)`` or ``(C, H, W)``."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class FlattenSpec:
    """Maps of ``n`` values in all, flattened for the dense layers after them."""

    n: int


@dataclass(frozen=True)
class DenseSpec:
    """A fully connected spiking layer ``n_in -> n_out``."""

    n_in: int
    n_out: int


@dataclass(frozen=True)
class ConvSpec:
    """A spiking convolution ``c_in -> c_out`` with a square ``kernel``, ``stride`` and ``padding``; ``in_hw -> out_hw``."""

    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


@dataclass(frozen=True)
class PoolSpec:
    """Earliest-spike pooling over ``kernel`` x ``kernel`` blocks (stride ``kernel``); ``in_hw -> out_hw``."""

    channels: int
    kernel: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


LayerSpec = EncodeSpec | FlattenSpec | DenseSpec | ConvSpec | PoolSpec

_CONV = re.compile(r"^(\d+)C(\d+)(?:s(\d+))?(?:p(\d+))?$")
_POOL = re.compile(r"^P(\d+)$")
_DENSE = re.compile(r"^(\d+)$")


def parse_arch(arch: str, input_shape: tuple[int, ...] | None = None) -> list[LayerSpec]:
    """Parse ``arch``; ``input_shape`` is ``(N,)`` or ``(C, H, W)`` (required for convolutions).

    Raises ``ValueError`` naming the bad token or the shape mismatch.
    """
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"arch must be a non-empty string like '784-800-10', got {arch!r}")
    if input_shape is not None:
        if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in input_shape
        ):
            raise ValueError(f"input_shape must be a tuple of integers like (1, 28, 28) or (784,), got {input_shape!r}")
        if len(input_shape) not in (1, 3):
            raise ValueError(f"input_shape must be (N,) or (C, H, W), got {tuple(input_shape)}")
        input_shape = tuple(int(d) for d in input_shape)
    tokens = [tok.strip() for tok in arch.strip().split("-")]
    for tok in tokens:
        if not (_CONV.match(tok) or _POOL.match(tok) or _DENSE.match(tok)):
            raise ValueError(f"arch {arch!r}: cannot parse token {tok!r} (expected N, <C>C<k>[s<s>][p<p>] or P<k>)")
    has_conv = any(_CONV.match(t) or _POOL.match(t) for t in tokens)
    if not has_conv:
        n_in = int(tokens[0])
        if input_shape is None:
            input_shape = (n_in,)
        if math.prod(input_shape) != n_in:
            raise ValueError(
                f"arch {arch!r} declares {n_in} inputs but the input shape {input_shape} has {math.prod(input_shape)}"
            )
        tokens = tokens[1:]
        if not tokens:
            raise ValueError(f"arch {arch!r} has no layer after the input size")
    elif input_shape is None or len(input_shape) != 3:
        raise ValueError(f"arch {arch!r} has convolutions: input_shape must be (C, H, W), got {input_shape}")
    if any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be positive, got {input_shape}")

    specs: list[LayerSpec] = [EncodeSpec(tuple(int(d) for d in input_shape))]
    shape: tuple[int, ...] = tuple(int(d) for d in input_shape)
    for tok in tokens:
        if m := _CONV.match(tok):
            if len(shape) != 3:
                raise ValueError(f"arch {arch!r}: convolution {tok!r} after a dense layer")
            c_out, k = int(m[1]), int(m[2])
            s, p = int(m[3] or 1), int(m[4] or 0)
            if c_out < 1 or k < 1 or s < 1:
                raise ValueError(f"arch {arch!r}: {tok!r} needs positive channels, kernel and stride")
            h, w = shape[1] + 2 * p, shape[2] + 2 * p
            if h < k or w < k:
                raise ValueError(f"arch {arch!r}: kernel of {tok!r} is larger than its input {shape[1:]}")
            out_hw = ((h - k) // s + 1, (w - k) // s + 1)
            specs.append(ConvSpec(shape[0], c_out, k, s, p, (shape[1], shape[2]), out_hw))
            shape = (c_out, *out_hw)
        elif m := _POOL.match(tok):
            if len(shape) != 3:
                raise ValueError(f"arch {arch!r}: pooling {tok!r} after a dense layer")
            k = int(m[1])
            if k < 1 or shape[1] < k or shape[2] < k:
                raise ValueError(f"arch {arch!r}: pooling {tok!r} does not fit its input {shape[1:]}")
            out_hw = (shape[1] // k, shape[2] // k)
            specs.append(PoolSpec(shape[0], k, (shape[1], shape[2]), out_hw))
            shape = (shape[0], *out_hw)
        else:
            n_out = int(tok)
            if n_out < 1:
                raise ValueError(f"arch {arch!r}: a dense layer needs at least one neuron")
            if len(shape) != 1:
                specs.append(FlattenSpec(math.prod(shape)))
                shape = (math.prod(shape),)
            specs.append(DenseSpec(shape[0], n_out))
            shape = (n_out,)
    if len(shape) != 1:
        raise ValueError(f"arch {arch!r} must end with a dense output layer")
    return specs


def layer_label(spec: LayerSpec) -> str:
    """A short name of a layer for reports: "input", "conv 16C5", "pool P2", "flatten", "dense 800"."""
    if isinstance(spec, EncodeSpec):
        return "input"
    if isinstance(spec, FlattenSpec):
        return "flatten"
    if isinstance(spec, DenseSpec):
        return f"dense {spec.n_out}"
    if isinstance(spec, ConvSpec):
        return f"conv {spec.c_out}C{spec.kernel}"
    return f"pool P{spec.kernel}"


def weight_layers(specs: list[LayerSpec]) -> list[int]:
    """Indices of the specs that carry a weight (dense and conv)."""
    return [i for i, s in enumerate(specs) if isinstance(s, (DenseSpec, ConvSpec))]
