"""Weight codecs: integers stored next to their min-max parameters.

The homework's mapping, generalised to any bit width and to per-output-channel ranges:
``q = round((w - min) / (max - min) * (2**bits - 1))`` and ``w ≈ min + q / (2**bits - 1) * (max - min)``.
Pure numpy: the exporter, the homework pickle writer and the tests share these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatWeight:
    """A tensor stored as floats (``array`` already in the stored dtype: float32 or float16)."""

    array: np.ndarray

    def decode(self) -> np.ndarray:
        return self.array.astype(np.float32)


@dataclass(frozen=True)
class MinMaxCode:
    """Integer codes plus the range they map back to (scalars, or one per output channel)."""

    q: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    bits: int

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1

    def decode(self, dtype=np.float32) -> np.ndarray:
        lo, hi = self.lo.astype(np.float64), self.hi.astype(np.float64)
        return (self.q.astype(np.float64) / self.levels * (hi - lo) + lo).astype(dtype)


def _ranges(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    if per_channel and w.ndim > 1:
        axes = tuple(range(1, w.ndim))
        return w.min(axis=axes, keepdims=True), w.max(axis=axes, keepdims=True)
    return np.asarray(w.min()), np.asarray(w.max())


def minmax_encode(w: np.ndarray, bits: int = 8, per_channel: bool = False,
                  lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> MinMaxCode:
    """Quantize ``w`` onto ``2**bits`` levels spanning [lo, hi] (its own min-max by default).

    With ``per_channel`` each output channel (axis 0) gets its own range. A constant tensor
    (max == min) encodes as all zeros and decodes exactly.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    w64 = np.asarray(w, dtype=np.float64)
    if lo is None or hi is None:
        lo, hi = _ranges(w64, per_channel)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    levels = 2 ** bits - 1
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.clip(np.round((w64 - lo) / span * levels), 0, levels).astype(np.uint8)
    return MinMaxCode(q, lo, hi, bits)


PACKABLE_BITS = (1, 2, 4)


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Flatten ``q`` and put ``8 // bits`` codes in each byte, first code in the lowest bits."""
    per_byte = 8 // bits
    flat = q.reshape(-1).astype(np.uint8)
    flat = np.concatenate([flat, np.zeros(-len(flat) % per_byte, np.uint8)]).reshape(-1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_codes`."""
    shifts = np.arange(8 // bits, dtype=np.uint8) * bits
    flat = ((packed[:, None] >> shifts) % (1 << bits)).reshape(-1)
    return flat[: int(np.prod(shape))].reshape(shape)
