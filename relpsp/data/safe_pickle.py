"""A restricted unpickler for dataset pickles (``mnist.pkl.gz``, CIFAR "python" batches).

``pickle.load`` runs whatever callable a file names, so an untrusted pickle can run arbitrary code. These
files only hold containers of numbers, strings and NumPy arrays. :class:`RestrictedUnpickler` therefore
lets no NumPy code run while it reads: the globals a NumPy pickle names (``_reconstruct``, ``ndarray``,
``dtype``, ``scalar``, ``_frombuffer``, under ``numpy.core`` or ``numpy._core``) resolve to inert stand-ins
of this module, and ``_codecs.encode`` to a latin-1-only encoder (how Python 3 writes ``bytes`` at
protocol 2). Any other global (``os.system``, ``builtins.eval``, ``numpy.load``, ...) and persistent ids
raise :class:`UnsafePickleError` before anything is called.

The stand-ins record what the file states and build the arrays afterwards with ``np.frombuffer`` from
checked parts only:

- a dtype must be one of the plain numeric codes in ``_PLAIN_DTYPES`` (no fields, subarrays, objects or
  strings), with byte order ``<``, ``>``, ``|`` or ``=``; NumPy's own ``dtype.__setstate__`` never runs,
  so a file cannot restate a dtype's fields or flags;
- an array's raw bytes must be exactly its shape times its item size, so every value comes from the file
  and the memory it takes is bounded by the file's size (no uninitialised memory, no huge allocation from
  a few bytes);
- the result may hold only lists, tuples, dicts, str, bytes, numbers, None and such arrays; it is walked
  once per distinct object, so shared references cannot make the walk exponential.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allowed NumPy array constructors, or states an array that
    is not plain numeric data."""


#: dtype codes an array or scalar in a dataset pickle may have (byte order given separately).
_PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


def _text(v: Any, what: str) -> str:
    """A str, or Python-2 ``bytes`` read with ``encoding="bytes"``, as str."""
    if isinstance(v, bytes):
        return v.decode("latin1")
    if isinstance(v, str):
        return v
    raise UnsafePickleError(f"{what} must be text, got {type(v).__name__}")


def _raw(v: Any, what: str) -> bytes:
    """Raw bytes: ``bytes``/``bytearray``, or a Python-2 string read with ``encoding="latin1"``."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("latin1")
    raise UnsafePickleError(f"{what} must be bytes, got {type(v).__name__}")


class _DtypeSpec:
    """Stand-in for ``numpy.dtype(code, align, copy)`` followed by its BUILD (byte order)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        code = _text(code, "a dtype code")
        if code not in _PLAIN_DTYPES:
            raise UnsafePickleError(f"refusing dtype {code!r}: only plain numeric dtypes are allowed")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # NumPy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags); a plain
        # dtype has no subarray, names or fields. Only the byte order is taken from the file.
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise UnsafePickleError(f"refusing a dtype state with fields or a subarray: {state!r:.200}")
        order = _text(state[1], "a dtype byte order")
        if order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"refusing dtype byte order {order!r}")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def _plain_dtype(v: Any) -> np.dtype:
    if not isinstance(v, _DtypeSpec):
        raise UnsafePickleError(f"an array's dtype must be a pickled numpy.dtype, got {type(v).__name__}")
    return v.dtype


def _array(raw: bytes, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    """A writable array in native byte order from exactly ``prod(shape) * itemsize`` bytes."""
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise UnsafePickleError(f"an array's shape must be a tuple of ints, got {shape!r:.200}")
    if any(d < 0 for d in shape):
        raise UnsafePickleError(f"an array's shape must not be negative, got {shape}")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise UnsafePickleError(
            f"an array of shape {shape} and dtype {dtype} needs {math.prod(shape) * dtype.itemsize} bytes, "
            f"the pickle holds {len(raw)}"
        )
    flat = np.frombuffer(raw, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="), order="C")


class _ArraySpec:
    """Stand-in for ``_reconstruct(ndarray, (0,), b'b')``; its BUILD state holds the array."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise UnsafePickleError("refusing a second state for one array")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"refusing an array state of {type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array(_raw(raw, "an array's data"), _plain_dtype(dtype), shape, bool(fortran))


class _ScalarSpec:
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, bytes)``: one plain value."""

    def __init__(self, dtype: Any, raw: Any = b"") -> None:
        dt = _plain_dtype(dtype)
        self.value = _array(_raw(raw, "a scalar's data"), dt, (), False)[()]

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refusing a state for a NumPy scalar")


class _NdarrayClass:
    """Stand-in for the class ``numpy.ndarray``: only ``_reconstruct`` may name it; calling it is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refusing a state for numpy.ndarray")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError("refusing to call numpy.ndarray: arrays must come with their data")


_NDARRAY = _NdarrayClass()


def _reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _ArraySpec:
    if cls is not _NDARRAY:
        raise UnsafePickleError("_reconstruct may only rebuild numpy.ndarray")
    return _ArraySpec()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _ArraySpec:
    spec = _ArraySpec()
    spec.array = _array(_raw(buf, "an array's data"), _plain_dtype(dtype), shape, _text(order, "an order") == "F")
    return spec


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    ok = isinstance(text, str) and isinstance(encoding, str)
    if not ok or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _Global:
    """What ``find_class`` hands out for a stand-in callable: it calls the stand-in and refuses a BUILD, which
    on a bare function or class would set attributes on this module's own objects."""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refusing a state for a global")


def _table() -> dict[tuple[str, str], Any]:
    # NumPy 1.x pickles say numpy.core.*, NumPy 2 says numpy._core.*; both map to the same stand-ins.
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _Global(_DtypeSpec),
        ("_codecs", "encode"): _Global(_latin1_encode),
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _Global(_reconstruct)
        table[(f"{core}.multiarray", "scalar")] = _Global(_ScalarSpec)
        table[(f"{core}.numeric", "_frombuffer")] = _Global(_frombuffer)
    return table


_ALLOWED = _table()


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are this module's stand-ins only; see the module docstring.
    Its ``load()`` returns stand-ins in place of arrays: use :func:`safe_loads`."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}: only NumPy arrays are allowed")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to unpickle a persistent id")


_PLAIN_TYPES = (str, bytes, int, float, complex, bool, type(None))


def _finish(root: Any) -> Any:
    """``root`` with every stand-in replaced by its array or value, each distinct object visited once;
    anything but plain containers, plain values and arrays raises ``UnsafePickleError``."""
    done: dict[int, Any] = {}
    keep = [root]  # ids stay unique while their objects are alive

    def convert(obj: Any) -> Any:
        key = id(obj)
        if key in done:
            return done[key]
        keep.append(obj)
        if isinstance(obj, _ArraySpec):
            if obj.array is None:
                raise UnsafePickleError("refusing an array without data")
            out: Any = obj.array
        elif isinstance(obj, _ScalarSpec):
            out = obj.value
        elif isinstance(obj, _DtypeSpec):
            out = obj.dtype
        elif isinstance(obj, _PLAIN_TYPES):
            out = obj
        elif isinstance(obj, list):
            out = []
            done[key] = out  # a list may hold itself
            out.extend(convert(v) for v in obj)
        elif isinstance(obj, tuple):
            out = tuple(convert(v) for v in obj)
        elif isinstance(obj, dict):
            out = {}
            done[key] = out
            for k, v in obj.items():
                if not isinstance(k, _PLAIN_TYPES):
                    raise UnsafePickleError(f"refusing a dict key of type {type(k).__name__}")
                out[k] = convert(v)
        else:
            raise UnsafePickleError(f"refusing an object of type {type(obj).__name__} in a dataset pickle")
        done[key] = out
        return out

    try:
        return convert(root)
    except RecursionError:
        raise UnsafePickleError("refusing containers nested too deeply") from None


def safe_loads(data: bytes, encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` and build its arrays from checked parts.

    ``encoding`` is passed to the unpickler: ``"latin1"`` for Python-2 pickles holding NumPy arrays,
    ``"bytes"`` to keep Python-2 strings as ``bytes`` (CIFAR's keys).
    """
    return _finish(RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load())
