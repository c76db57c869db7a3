"""A pickle reader that cannot run code: it admits numpy arrays, dtypes, scalars and
plain containers, which is all the homework's 8-bit and 16-bit weight pickles contain.

Every other global a pickle names (``os.system``, ``builtins.eval``, ...) is refused
before it is looked up, so a crafted file fails with `UnsafePickleError` and runs nothing.
Nor can a small pickle make it allocate much: every array it builds must fit, with all the
others, in the pickle's own size (a real weights pickle carries each array's bytes), checked
from the declared shape and dtype before allocating; and the memo is the pure-Python
unpickler's dict (the C unpickler sizes its memo table from the largest index a file names,
so a 10-byte pickle could take gigabytes).
"""

from __future__ import annotations

import collections
import io
import math
import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the allowed set, or declares more than it holds."""


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError("object arrays are refused: they can hold arbitrary Python objects")
    return dtype


def _scalar(dtype, data=None):
    dtype = _plain_dtype(dtype)
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type(0)


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode``, as protocols 0-2 store bytes (the array data a numpy pickle carries)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("_codecs.encode is admitted only to turn latin-1 text into the bytes it stores")
    return text.encode("latin1")


def _empty_bytes():
    """``bytes()``, as protocols 0-2 store empty bytes (never ``bytes(n)``: that allocates n bytes)."""
    return b""


def _from_buffer(buffer, dtype, shape, order="C"):
    """``numpy._core.numeric._frombuffer``, as protocol 5 stores an array: a view of bytes the pickle holds."""
    if order not in ("C", "F"):
        raise UnsafePickleError(f"an array order of {order!r}")
    return np.frombuffer(buffer, dtype=_plain_dtype(dtype)).reshape(shape, order=order)


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict
    def __init__(self, data: bytes):
        self._source = io.BytesIO(data)
        super().__init__(self._source)
        self.budget = len(data)  # bytes every array together may take
        self.ndarray = self._new_array  # one bound method: `_reconstruct` knows it by identity
        self.allowed = {
            ("numpy", "ndarray"): self.ndarray,
            ("_codecs", "encode"): _latin1_bytes,
            ("__builtin__", "bytes"): _empty_bytes,
            ("builtins", "bytes"): _empty_bytes,
            ("numpy", "dtype"): _plain_dtype,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self.allowed[(module, "_reconstruct")] = self._reconstruct
            self.allowed[(module, "scalar")] = _scalar
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            self.allowed[(module, "_frombuffer")] = _from_buffer

    def end(self) -> int:
        """Bytes read so far (after `load`: where the pickle ended)."""
        return self._source.tell()

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            if module.split(".")[0] == "numpy":  # numpy's own objects run no code, but hold no weights either
                raise UnsafePickleError(f"refused to load {module}.{name}: edge reads numpy arrays, dtypes and "
                                        "numbers, not other numpy objects") from None
            raise UnsafePickleError(f"refused to load {module}.{name}: it is no part of numpy arrays or numbers, "
                                    "so this file may try to run code") from None

    def _new_array(self, shape, dtype=float):
        """``numpy.ndarray(shape, dtype)``, allocated only when the pickle could hold its bytes."""
        dtype = _plain_dtype(dtype)
        self._spend(shape, dtype)
        return np.ndarray.__new__(np.ndarray, shape, dtype)

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is not self.ndarray:
            raise UnsafePickleError(f"only numpy.ndarray may be rebuilt, not {subtype!r}")
        return self._new_array(shape, dtype)

    def _spend(self, shape, dtype: np.dtype) -> None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(n, int) and n >= 0 for n in dims):
            raise UnsafePickleError(f"an array shape of {shape!r}: not whole numbers >= 0")
        size = math.prod(dims) * dtype.itemsize
        if size > self.budget:
            raise UnsafePickleError(f"an array of shape {dims} {dtype} declares {size:,} bytes, more than the "
                                    f"pickle's own size allows (refused before allocating)")
        self.budget -= size


def safe_loads(data: bytes):
    """Unpickle ``data`` admitting only numpy arrays, dtypes, scalars and containers."""
    return safe_load_prefix(data)[0]


def safe_load_prefix(data: bytes) -> tuple[object, int]:
    """(`safe_loads` of the pickle that ``data`` starts with, where that pickle ends: what follows is not read)."""
    unpickler = _RestrictedUnpickler(data)
    return unpickler.load(), unpickler.end()
