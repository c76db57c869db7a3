"""A pickle reader that cannot run code: it admits numpy arrays, dtypes, scalars and
plain containers, which is all the homework's 8-bit and 16-bit weight pickles contain.

Every other global a pickle names (``os.system``, ``builtins.eval``, ...) is refused
before it is looked up, so a crafted file fails with `UnsafePickleError` and runs nothing.
"""

from __future__ import annotations

import collections
import io
import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the allowed set."""


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError("object arrays are refused: they can hold arbitrary Python objects")
    return dtype


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"only numpy.ndarray may be rebuilt, not {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(dtype))


def _scalar(dtype, data=None):
    dtype = _plain_dtype(dtype)
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type(0)


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: weight pickles hold only numpy arrays and "
                "numbers, so this file may try to run code") from None


def safe_loads(data: bytes):
    """Unpickle ``data`` admitting only numpy arrays, dtypes, scalars and containers."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()
