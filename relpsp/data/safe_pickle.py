"""A restricted unpickler for dataset pickles (``mnist.pkl.gz``, CIFAR "python" batches).

``pickle.load`` runs whatever callable a file names, so an untrusted pickle can run arbitrary code. These
files only hold containers of numbers, strings and NumPy arrays, so :class:`RestrictedUnpickler` resolves
just the few NumPy globals that rebuild an array (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``,
``_frombuffer``) from a fixed table, never by importing a name from the file, plus ``_codecs.encode``
restricted to latin-1 (how Python 3 writes ``bytes`` at pickle protocol 2). Any other global
(``os.system``, ``builtins.eval``, ...) and persistent ids raise :class:`UnsafePickleError` before
anything is called. Object arrays are refused too, so the result holds only plain data.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allowed NumPy array constructors."""


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    import importlib
    import warnings

    for mod in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core is a deprecated alias in NumPy 2
                obj = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    return None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    ok = isinstance(text, str) and isinstance(encoding, str)
    if not ok or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    # NumPy 1.x pickles say numpy.core.*, NumPy 2 says numpy._core.*; both map to the same objects.
    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for names, attr in ((multiarray, "_reconstruct"), (multiarray, "scalar"), (numeric, "_frombuffer")):
        obj = _numpy_attr(names, attr)
        if obj is not None:
            for mod in names:
                table[(mod, attr)] = obj
    return table


_ALLOWED: dict[tuple[str, str], Any] | None = None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only NumPy array constructors; see the module docstring."""

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}: only NumPy arrays are allowed")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to unpickle a persistent id")


def _check_plain(obj: Any) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError("refusing a NumPy object array")
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _check_plain(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            _check_plain(item)


def safe_loads(data: bytes, encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    ``encoding`` is passed to the unpickler: ``"latin1"`` for Python-2 pickles holding NumPy arrays,
    ``"bytes"`` to keep Python-2 strings as ``bytes`` (CIFAR's keys).
    """
    obj = RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    _check_plain(obj)
    return obj
