"""Weight codecs: integers stored next to their min-max parameters.

The homework's mapping, generalised to any bit width and to per-output-channel ranges:
``q = round((w - min) / (max - min) * (2**bits - 1))`` and ``w ≈ min + q / (2**bits - 1) * (max - min)``;
and weight sharing: codes that index a small codebook (per tensor or per output channel).
Codes of any width 1..8 pack densely into bytes (`pack_codes`). Pure numpy: the exporter, the
homework pickle writer, edge's runtime and the tests share these functions.
"""

from __future__ import annotations

import dataclasses
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
    range_dtype: type | None = None  # None: exact ranges (homework pickles); np.float16: as ONNX stores them

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1

    @property
    def offset(self) -> np.ndarray:
        """The grid's first level, as stored."""
        return self._stored(np.asarray(self.lo, np.float64))

    @property
    def step(self) -> np.ndarray:
        """The distance between levels, as stored."""
        return self._stored((np.asarray(self.hi, np.float64) - np.asarray(self.lo, np.float64)) / self.levels)

    def _stored(self, value: np.ndarray) -> np.ndarray:
        if self.range_dtype is None:
            return value
        if np.abs(value).max(initial=0) > np.finfo(self.range_dtype).max:
            raise ValueError(f"a weight range of {np.abs(value).max():.3g} does not fit {np.dtype(self.range_dtype)}")
        return value.astype(self.range_dtype).astype(np.float64)

    def decode(self, dtype=np.float32) -> np.ndarray:
        return (self.q.astype(np.float64) * self.step + self.offset).astype(dtype)


@dataclass(frozen=True)
class CodebookCode:
    """Weight sharing: ``q`` indexes ``codebook`` (K,); per output channel, each channel's values are
    the codebook times its own ``scale`` (out,)."""

    q: np.ndarray
    codebook: np.ndarray
    scale: np.ndarray | None = None

    @property
    def bits(self) -> int:
        return max(1, int(np.ceil(np.log2(len(self.codebook)))))

    @property
    def per_channel(self) -> bool:
        return self.scale is not None

    def channel_scale(self) -> np.ndarray:
        """The scales shaped to broadcast over ``q`` (ones when shared per tensor)."""
        scale = np.ones(len(self.q), np.float32) if self.scale is None else self.scale.astype(np.float32)
        return scale.reshape((-1,) + (1,) * (self.q.ndim - 1))

    def decode(self, dtype=np.float32) -> np.ndarray:
        return (self.codebook.astype(np.float32)[self.q] * self.channel_scale()).astype(dtype)


def _ranges(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    if per_channel and w.ndim > 1:
        axes = tuple(range(1, w.ndim))
        return w.min(axis=axes, keepdims=True), w.max(axis=axes, keepdims=True)
    return np.asarray(w.min()), np.asarray(w.max())


def minmax_encode(w: np.ndarray, bits: int = 8, per_channel: bool = False,
                  lo: np.ndarray | None = None, hi: np.ndarray | None = None, range_dtype=None) -> MinMaxCode:
    """Quantize ``w`` onto ``2**bits`` levels spanning [lo, hi] (its own min-max by default).

    With ``per_channel`` each output channel (axis 0) gets its own range. A constant tensor
    (max == min) encodes as all zeros and decodes exactly. ``range_dtype`` (np.float16 in ONNX files)
    is how the grid's offset and step are stored; codes are rounded on that stored grid.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    w64 = np.asarray(w, dtype=np.float64)
    if lo is None or hi is None:
        lo, hi = _ranges(w64, per_channel)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    grid = MinMaxCode(np.zeros(0, np.uint8), lo, hi, bits, range_dtype)
    if range_dtype is None:  # the homework's formula, to the last rounding
        scaled = (w64 - lo) / np.where(hi > lo, hi - lo, 1.0) * grid.levels
    else:
        scaled = (w64 - grid.offset) / np.where(grid.step > 0, grid.step, 1.0)
    return dataclasses.replace(grid, q=np.clip(np.round(scaled), 0, grid.levels).astype(np.uint8))


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Flatten ``q`` (values < 2**bits) into a dense little-endian bit stream: code i fills bits
    ``i*bits .. i*bits + bits - 1`` (bit 0 = the lowest bit of byte 0), zero-padded to whole bytes.
    For 1, 2, 4 and 8 bits that is ``8 // bits`` codes per byte, the first in the lowest bits."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    flat = q.reshape(-1).astype(np.uint8)
    planes = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_codes`."""
    count = int(np.prod(shape))
    planes = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    return (planes.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8).reshape(shape)


CODE_STREAM = "codes"  # initializer names of the packed code streams in edge's ONNX files: codes1 .. codes8


def code_stream_name(bits: int) -> str:
    return f"{CODE_STREAM}{bits}"


def code_stream_bits(name: str) -> int | None:
    """The width of a code stream initializer's codes, None for any other initializer."""
    tail = name[len(CODE_STREAM):]
    return int(tail) if name.startswith(CODE_STREAM) and tail.isdigit() and 1 <= int(tail) <= 8 else None
