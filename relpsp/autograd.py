"""Thin autograd Function for the exact ReL-PSP dense op, and the choice of backend.

Backends (same results within float rounding; see ``relpsp.core.dense`` for the maths):

- ``"torch"``: plain torch, any device (``relpsp.core.dense``).
- ``"numba"``: compiled CPU kernels (``relpsp.kernels.cpu_numba``), float32/float64 CPU tensors only;
  needs the ``cpu`` extra.
- ``"triton"``: fused GPU kernels (``relpsp.kernels.gpu_triton``), float32/float64 CUDA tensors (CPU
  tensors only under ``TRITON_INTERPRET=1``, for tests); needs the ``triton`` extra.
- ``"auto"``: ``"numba"`` for CPU float32/float64 tensors when numba is installed, ``"triton"`` for CUDA
  float32/float64 tensors when triton is installed, else ``"torch"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from relpsp.core.dense import W_SUM_MIN, relpsp_linear_bwd_torch, relpsp_linear_fwd_torch
from relpsp.kernels import (
    NUMBA_DTYPES,
    cpu_kernels_fit,
    load_cpu_kernels,
    load_gpu_kernels,
    triton_available,
    triton_interpreted,
)

__all__ = [
    "BACKENDS",
    "RelpspConv2dFn",
    "RelpspLinearFn",
    "conv_kernel_applies",
    "im2col_rows",
    "relpsp_linear_rows",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "numba", "triton")
_TRITON_DTYPES = NUMBA_DTYPES


def resolve_backend(backend: str, t_in: Tensor) -> str:
    """Map ``backend`` to a concrete one for this tensor; raise ``ValueError``/``RuntimeError`` clearly."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if cpu_kernels_fit(t_in):
            return "numba"
        if t_in.device.type == "cuda" and t_in.dtype in _TRITON_DTYPES and triton_available():
            return "triton"
        return "torch"
    if backend == "numba":
        if t_in.device.type != "cpu" or t_in.dtype not in NUMBA_DTYPES:
            raise ValueError(f"backend 'numba' runs float32/float64 CPU tensors, got {t_in.dtype} on {t_in.device}")
        load_cpu_kernels()  # raises with the install hint when numba is missing
    if backend == "triton":
        on_device = t_in.device.type == "cuda" or (t_in.device.type == "cpu" and triton_interpreted())
        if not on_device or t_in.dtype not in _TRITON_DTYPES:
            raise ValueError(
                f"backend 'triton' runs float32/float64 CUDA tensors (CPU ones only with TRITON_INTERPRET=1), "
                f"got {t_in.dtype} on {t_in.device}"
            )
        load_gpu_kernels()
    return backend


def _fwd(backend: str, t_in: Tensor, weight: Tensor, theta: float, t_max: float) -> tuple[Tensor, Tensor]:
    if backend == "numba":
        k = load_cpu_kernels()
        t_out, w_sum = k.linear_fwd(t_in.detach().numpy(), weight.detach().numpy(), theta, t_max)
        return torch.from_numpy(t_out), torch.from_numpy(w_sum)
    if backend == "triton":
        return load_gpu_kernels().linear_fwd(t_in.detach(), weight.detach(), theta, t_max)
    return relpsp_linear_fwd_torch(t_in.detach(), weight.detach(), theta, t_max)


class RelpspLinearFn(torch.autograd.Function):
    """``(t_in [R, N_in], weight [N_out, N_in]) -> (t_out [R, N_out], w_sum [R, N_out])``.

    ``w_sum`` (W_j of firing neurons, 0 elsewhere) is returned for inspection and is not differentiable.
    Inputs are assumed valid; validation lives in ``relpsp.functional``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        t_in: Tensor, weight: Tensor, theta: float, t_max: float, w_sum_min: float, backend: str
    ) -> tuple[Tensor, Tensor]:
        return _fwd(backend, t_in, weight, theta, t_max)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        t_in, weight, _theta, _t_max, w_sum_min, backend = inputs
        t_out, w_sum = output
        ctx.save_for_backward(t_in, weight, t_out, w_sum)
        ctx.mark_non_differentiable(w_sum)
        ctx.set_materialize_grads(False)  # w_sum gets no gradient: no zero tensor for it each step
        ctx.w_sum_min = w_sum_min
        ctx.backend = backend

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, _grad_w_sum: Tensor | None) -> tuple[Tensor | None, ...]:
        t_in, weight, t_out, w_sum = ctx.saved_tensors
        need_in, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_out is None or not (need_in or need_w):  # None: t_out was not used (grads not materialised)
            return None, None, None, None, None, None
        grad_out = grad_out.contiguous()
        if ctx.backend == "numba":
            k = load_cpu_kernels()
            g_in_np, g_w_np = k.linear_bwd(
                grad_out.numpy(), t_in.numpy(), weight.numpy(), t_out.numpy(), w_sum.numpy(), ctx.w_sum_min, need_in
            )
            g_in: Tensor | None = None if g_in_np is None else torch.from_numpy(g_in_np)
            g_w: Tensor | None = torch.from_numpy(g_w_np)
        elif ctx.backend == "triton":
            g_in, g_w = load_gpu_kernels().linear_bwd(
                grad_out, t_in, weight, t_out, w_sum, ctx.w_sum_min, need_in, need_w
            )
        else:
            g_in, g_w = relpsp_linear_bwd_torch(grad_out, t_in, weight, t_out, w_sum, ctx.w_sum_min, need_in, need_w)
        return (g_in if need_in else None), (g_w if need_w else None), None, None, None, None


def relpsp_linear_rows(
    t_in: Tensor,
    weight: Tensor,
    theta: float = 1.0,
    t_max: float = math.inf,
    w_sum_min: float = W_SUM_MIN,
    backend: str = "auto",
) -> Tensor:
    """Unvalidated exact dense op on 2-D rows with STDBP gradients; returns ``t_out [R, N_out]``."""
    concrete = resolve_backend(backend, t_in)
    t_out, _ = RelpspLinearFn.apply(t_in, weight, float(theta), float(t_max), float(w_sum_min), concrete)
    return t_out


def im2col_rows(t_pad: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """``[B, C, Hp, Wp]`` (already padded) -> rows ``[B * H_out * W_out, C * kh * kw]`` of receptive fields,
    columns in F.unfold's order (``c * kh * kw + i * kw + j``): a strided view copied once. F.unfold ran
    one im2col kernel per image on CUDA (1.3 ms of conv1's 2.7 ms forward at batch 256 on an H200) and was
    about 4x slower on the CPU too."""
    b, c = t_pad.shape[0], t_pad.shape[1]
    view = t_pad.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1])
    h_out, w_out = view.shape[2], view.shape[3]
    # Explicit sizes: an empty batch (B = 0) is valid and reshape cannot infer a -1 from 0 elements.
    return view.permute(0, 2, 3, 1, 4, 5).reshape(b * h_out * w_out, c * kernel[0] * kernel[1])


def conv_kernel_applies(padded_hw: tuple[int, int], kernel: tuple[int, int]) -> bool:
    """Whether the numba convolution kernel (one sort per image, windows read from a rank bitmap of
    C*Hp*Wp/64 words) beats sorting every im2col row: when the bitmap is no longer than a window."""
    return padded_hw[0] * padded_hw[1] <= 64 * kernel[0] * kernel[1]


class RelpspConv2dFn(torch.autograd.Function):
    """Numba-only ``(t_pad [B, C, Hp, Wp], weight [C_out, C, kh, kw]) -> (t_rows, w_sum)``, both
    ``[B * H_out * W_out, C_out]`` in im2col row order; ``t_pad`` is the input already padded with +inf.

    The forward sorts each image's spikes once (``cpu_numba.conv_fwd``), or with ``image_sort=False``
    (large images under small kernels, see ``conv_kernel_applies``) runs the dense kernel on im2col rows
    that it does not keep; the backward
    (``cpu_numba.conv_bwd``) applies the dense backward to every window read from ``t_pad`` and adds the
    window gradients onto the image, so the gradients are those of the im2col path (F.unfold, the dense
    backward, F.fold) up to the order of the float sums, without building the rows.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        t_pad: Tensor,
        weight: Tensor,
        stride: tuple[int, int],
        theta: float,
        t_max: float,
        w_sum_min: float,
        image_sort: bool = True,
    ) -> tuple[Tensor, Tensor]:
        k = load_cpu_kernels()
        if image_sort:
            t_out, w_sum = k.conv_fwd(t_pad.detach().numpy(), weight.detach().numpy(), stride, theta, t_max)
        else:  # the dense kernel on im2col rows (built here, not kept for the backward)
            rows = im2col_rows(t_pad.detach(), (weight.shape[2], weight.shape[3]), stride)
            t_out, w_sum = k.linear_fwd(
                rows.numpy(), weight.detach().reshape(weight.shape[0], -1).numpy(), theta, t_max
            )
        return torch.from_numpy(t_out), torch.from_numpy(w_sum)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        t_pad, weight, stride, _theta, _t_max, w_sum_min, _image_sort = inputs
        t_out, w_sum = output
        ctx.save_for_backward(t_pad, weight, t_out, w_sum)
        ctx.mark_non_differentiable(w_sum)
        ctx.set_materialize_grads(False)
        ctx.stride = stride
        ctx.w_sum_min = w_sum_min

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, _grad_w_sum: Tensor | None) -> tuple[Tensor | None, ...]:
        t_pad, weight, t_out, w_sum = ctx.saved_tensors
        need_in, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_out is None or not (need_in or need_w):  # None: t_out was not used (grads not materialised)
            return None, None, None, None, None, None, None
        g_in_np, g_w_np = load_cpu_kernels().conv_bwd(
            grad_out.numpy(),
            t_pad.numpy(),
            weight.numpy(),
            t_out.numpy(),
            w_sum.numpy(),
            ctx.stride,
            ctx.w_sum_min,
            need_in,
        )
        g_in = None if g_in_np is None else torch.from_numpy(g_in_np)  # None exactly when not need_in
        g_weight = torch.from_numpy(g_w_np) if need_w else None
        return g_in, g_weight, None, None, None, None, None
