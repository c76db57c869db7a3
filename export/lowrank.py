"""Low-rank storage of the pointwise convs and the classifier: ``W ≈ U · V`` by truncated SVD.

A pointwise conv (or the classifier) is an ``out × in`` matrix; keeping the ``r`` largest singular
values stores ``r (out + in)`` numbers instead of ``out · in``. The rank is the smallest that keeps
``energy`` of the squared singular values (``--low-rank 0.99``), used only where it saves bytes,
so at ``energy = 1`` every layer keeps its full rank and is stored unfactored (exact). The file
holds U and V (with the singular values split evenly between them) and a MatMul on constants, so
ONNX Runtime folds W back at load: inference runs at full-rank speed, only the bytes shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.models.fold import FoldedLayer
from edge.codec.quant import FloatWeight


@dataclass(frozen=True)
class LowRankWeight:
    """``left @ right`` reshaped to ``shape``."""

    left: FloatWeight  # (out, rank)
    right: FloatWeight  # (rank, in)
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.left.array.shape[1]

    def decode(self) -> np.ndarray:
        return (self.left.decode() @ self.right.decode()).reshape(self.shape).astype(np.float32)


def factorable(layer: FoldedLayer) -> bool:
    """Pointwise convs and linear layers: the layers that are one matrix."""
    return layer.groups == 1 and layer.weight[0, 0].size == 1


def rank_for_energy(singular: np.ndarray, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` (0..1] of the squared total."""
    kept = np.cumsum(singular.astype(np.float64) ** 2) / max(float(np.sum(singular.astype(np.float64) ** 2)), 1e-300)
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(singular)))


def factorize(weight: np.ndarray, rank: int, dtype=np.float32) -> LowRankWeight:
    """The rank-``rank`` truncated SVD of ``weight`` (as out × in), factors stored as ``dtype``."""
    matrix = weight.reshape(len(weight), -1).astype(np.float64)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    return LowRankWeight(FloatWeight((u[:, :rank] * root).astype(dtype)), FloatWeight((root[:, None] * vt[:rank]).astype(dtype)),
                         weight.shape)


def low_rank_encodings(layers: list[FoldedLayer], energy: float, dtype=np.float32) -> dict:
    """{layer name: encoding}: factorable layers as `LowRankWeight` where the rank that keeps
    ``energy`` stores fewer numbers than the matrix, every other layer as a ``dtype`` float."""
    encodings = {}
    for layer in layers:
        encodings[layer.name] = FloatWeight(layer.weight.astype(dtype))
        if factorable(layer):
            out, inputs = len(layer.weight), layer.weight.size // len(layer.weight)
            rank = rank_for_energy(np.linalg.svd(layer.weight.reshape(out, -1), compute_uv=False), energy)
            if rank * (out + inputs) < out * inputs:
                encodings[layer.name] = factorize(layer.weight, rank, dtype)
    return encodings
