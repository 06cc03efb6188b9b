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
  (no uninitialised memory, no huge allocation from a few bytes);
- what the stand-ins keep (each array's copy, each ``_codecs.encode`` result) is charged to a byte budget,
  by default twice the pickle's size plus 1 MiB (:func:`safe_loads`). A pickle may name one stored string
  from many places, so without the budget a 1 MiB file could state a thousand 1 MiB arrays;
- the result may hold only lists, tuples, dicts, str, bytes, numbers, None and such arrays; it is walked
  once per distinct object, so shared references cannot make the walk exponential.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "default_budget", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allowed NumPy array constructors, states an array that is
    not plain numeric data, or makes the reader keep more bytes than its budget."""


class _Budget:
    """The bytes the stand-ins of one unpickler may still keep; :meth:`charge` before allocating."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise UnsafePickleError(
                f"refusing a pickle whose arrays and strings need more than {self.limit:,} bytes "
                "(a dataset pickle's data is stored once; this one names the same data many times)"
            )


def default_budget(n_bytes: int) -> int:
    """The byte budget :func:`safe_loads` gives a pickle of ``n_bytes`` bytes: twice its size (a
    Python-3 ``bytes`` at protocol 2 is one string, re-encoded, then copied into its array) plus 1 MiB."""
    return 2 * n_bytes + (1 << 20)


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


def _array(budget: _Budget, raw: bytes, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    """A writable array in native byte order from exactly ``prod(shape) * itemsize`` bytes, charged to
    ``budget``."""
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise UnsafePickleError(f"an array's shape must be a tuple of ints, got {shape!r:.200}")
    if any(d < 0 for d in shape):
        raise UnsafePickleError(f"an array's shape must not be negative, got {shape}")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise UnsafePickleError(
            f"an array of shape {shape} and dtype {dtype} needs {math.prod(shape) * dtype.itemsize} bytes, "
            f"the pickle holds {len(raw)}"
        )
    budget.charge(len(raw))
    flat = np.frombuffer(raw, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="), order="C")


class _ArraySpec:
    """Stand-in for ``_reconstruct(ndarray, (0,), b'b')``; its BUILD state holds the array."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise UnsafePickleError("refusing a second state for one array")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"refusing an array state of {type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array(self.budget, _raw(raw, "an array's data"), _plain_dtype(dtype), shape, bool(fortran))


class _ScalarSpec:
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, bytes)``: one plain value."""

    def __init__(self, budget: _Budget, dtype: Any, raw: Any = b"") -> None:
        dt = _plain_dtype(dtype)
        self.value = _array(budget, _raw(raw, "a scalar's data"), dt, (), False)[()]

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


def _reconstruct(budget: _Budget, cls: Any, shape: Any = None, typecode: Any = None) -> _ArraySpec:
    if cls is not _NDARRAY:
        raise UnsafePickleError("_reconstruct may only rebuild numpy.ndarray")
    return _ArraySpec(budget)


def _frombuffer(budget: _Budget, buf: Any, dtype: Any, shape: Any, order: Any) -> _ArraySpec:
    spec = _ArraySpec(budget)
    raw = _raw(buf, "an array's data")
    spec.array = _array(budget, raw, _plain_dtype(dtype), shape, _text(order, "an order") == "F")
    return spec


def _latin1_encode(budget: _Budget, text: str, encoding: str = "latin1") -> bytes:
    ok = isinstance(text, str) and isinstance(encoding, str)
    if not ok or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    budget.charge(len(text))
    return text.encode("latin1")


class _Global:
    """What ``find_class`` hands out for a stand-in callable: it calls the stand-in and refuses a BUILD, which
    on a bare function or class would set attributes on this module's own objects."""

    __slots__ = ("_budget", "_target")

    def __init__(self, target: Any, budget: _Budget | None = None) -> None:
        self._target = target
        self._budget = budget

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._budget is None:
            return self._target(*args, **kwargs)
        return self._target(self._budget, *args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refusing a state for a global")


def _table(budget: _Budget) -> dict[tuple[str, str], Any]:
    # NumPy 1.x pickles say numpy.core.*, NumPy 2 says numpy._core.*; both map to the same stand-ins.
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _Global(_DtypeSpec),
        ("_codecs", "encode"): _Global(_latin1_encode, budget),
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _Global(_reconstruct, budget)
        table[(f"{core}.multiarray", "scalar")] = _Global(_ScalarSpec, budget)
        table[(f"{core}.numeric", "_frombuffer")] = _Global(_frombuffer, budget)
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are this module's stand-ins only; see the module docstring.
    What its stand-ins keep may total at most ``max_bytes`` (:func:`default_budget` of the file's size
    is what :func:`safe_loads` gives). Its ``load()`` returns stand-ins in place of arrays: use
    :func:`safe_loads`."""

    def __init__(self, file: Any, *, max_bytes: int, **kwargs: Any) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        super().__init__(file, **kwargs)
        self._allowed = _table(_Budget(max_bytes))

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
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
    ``"bytes"`` to keep Python-2 strings as ``bytes`` (CIFAR's keys). The arrays and strings it builds
    may take at most ``default_budget(len(data))`` bytes; more raises :class:`UnsafePickleError`.
    """
    unpickler = RestrictedUnpickler(io.BytesIO(data), max_bytes=default_budget(len(data)), encoding=encoding)
    return _finish(unpickler.load())
