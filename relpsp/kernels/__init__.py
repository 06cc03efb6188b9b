"""Optional compiled kernels with the contract of ``relpsp.core.dense`` (and, in ``alpha_numba``,
``window_numba`` and ``pool_numba``, of the alpha-kernel baseline, the windowed neuron and the pooling); imported lazily.

The numba kernels need the ``cpu`` extra (``pip install relpsp[cpu]``), ``gpu_triton`` the ``triton`` extra
(``pip install relpsp[triton]``). Nothing here is imported by ``import relpsp``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

__all__ = [
    "NUMBA_DTYPES",
    "cpu_kernels_available",
    "cpu_kernels_fit",
    "load_alpha_kernels",
    "load_cpu_kernels",
    "load_gpu_kernels",
    "load_pool_kernels",
    "load_window_kernels",
    "set_cpu_kernel_threads",
    "triton_available",
    "triton_interpreted",
]

_INSTALL_HINT = "the 'numba' backend needs numba: pip install 'relpsp[cpu]' (or pip install numba)"


def cpu_kernels_available() -> bool:
    """True when numba can be imported (without importing the kernels themselves)."""
    return importlib.util.find_spec("numba") is not None


#: the dtypes the numba kernels take
NUMBA_DTYPES = (torch.float32, torch.float64)


def cpu_kernels_fit(t: torch.Tensor) -> bool:
    """True where the numba kernels can run ``t``: a float32 or float64 tensor on the CPU, numba installed."""
    return t.device.type == "cpu" and t.dtype in NUMBA_DTYPES and cpu_kernels_available()


def _require_numba(hint: str = _INSTALL_HINT) -> None:
    if not cpu_kernels_available():
        raise RuntimeError(hint)


def load_cpu_kernels() -> ModuleType:
    """Import and return ``relpsp.kernels.cpu_numba``; raise ``RuntimeError`` saying what to install.

    See ``relpsp/__init__.py`` for the OpenMP wait policy that keeps these kernels fast under load.
    """
    _require_numba()
    return importlib.import_module("relpsp.kernels.cpu_numba")


def load_alpha_kernels() -> ModuleType:
    """Import and return ``relpsp.kernels.alpha_numba`` (the alpha-kernel baseline of ``relpsp.alpha``);
    raise ``RuntimeError`` saying what to install."""
    hint = "the alpha-kernel baseline needs numba: pip install 'relpsp[cpu]' (or pip install numba)"
    _require_numba(hint)
    return importlib.import_module("relpsp.kernels.alpha_numba")


def load_pool_kernels() -> ModuleType:
    """Import and return ``relpsp.kernels.pool_numba`` (the earliest-spike pooling in one pass each way);
    raise ``RuntimeError`` saying what to install."""
    _require_numba()
    return importlib.import_module("relpsp.kernels.pool_numba")


def load_window_kernels() -> ModuleType:
    """Import and return ``relpsp.kernels.window_numba`` (the windowed neuron's closed form in one pass);
    raise ``RuntimeError`` saying what to install."""
    _require_numba()
    return importlib.import_module("relpsp.kernels.window_numba")


_TRITON_HINT = "the 'triton' backend needs triton: pip install 'relpsp[triton]' (or pip install triton)"


def triton_available() -> bool:
    """True when triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1``: triton kernels then run on CPU tensors (for tests, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def load_gpu_kernels() -> ModuleType:
    """Import and return ``relpsp.kernels.gpu_triton``; raise ``RuntimeError`` saying what to install."""
    if not triton_available():
        raise RuntimeError(_TRITON_HINT)
    return importlib.import_module("relpsp.kernels.gpu_triton")


def set_cpu_kernel_threads(n: int) -> int:
    """Threads of the compiled CPU kernels (capped at what numba allows); returns the number set, 0 if
    numba is missing."""
    if not cpu_kernels_available():
        return 0
    import numba

    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    n = max(1, min(int(n), limit))
    numba.set_num_threads(n)
    return n
