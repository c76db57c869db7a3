"""Cross-layer equalization of a folded StudentNet (Nagel et al., "Data-Free Quantization", ICCV 2019).

After BatchNorm folding, the output channels of a layer can span ranges hundreds of times apart, and
one per-tensor min-max grid then wastes most of its levels on a few wide channels. Scaling output
channel ``c`` of a layer by ``1 / s_c`` and the matching input channel of the next layer by ``s_c``
leaves the network's function unchanged whenever everything between them is positive-homogeneous.
In a StudentNet that holds exactly for a pointwise conv followed by the next stage's depthwise conv
(or by the classifier): only max-pooling, zero padding and global average pooling lie between,
and ``f(x / s) * s == f(x)`` for all of them (the ReLU6 after a depthwise conv clips at a fixed 6,
so the depthwise -> pointwise pairs are left alone). The equalized model is the same function in
float; only its quantization error changes, and it costs no bytes.

The scales: when both layers are stored as integers, ``s_c = sqrt(r1_c / r2_c)`` gives both the
same channel range ``sqrt(r1_c * r2_c)`` (DFQ's choice); when the next layer stays float (small
layers are kept fp16), all of the spread moves into it and the first layer's rows all get the
tensor's largest range (and the other way round when the first layer is the float one).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge.fold import FoldedLayer

SCALE_LIMITS = (1e-3, 1e3)  # keep fp16 copies of the scaled weights far from under/overflow


def _is_depthwise(layer: FoldedLayer) -> bool:
    return layer.kind == "conv" and layer.groups > 1 and layer.groups == layer.weight.shape[0]


def equalizable(first: FoldedLayer, second: FoldedLayer) -> bool:
    """True when only positive-homogeneous ops (pooling, padding) lie between the two layers."""
    return first.kind == "conv" and first.groups == 1 and not first.relu6 and (
        _is_depthwise(second) or second.kind == "fc")


def _channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(weight.ndim) if a != axis)
    return np.abs(weight.astype(np.float64)).max(axis=other)


def _scales(r1: np.ndarray, r2: np.ndarray, first_is_float: bool, second_is_float: bool) -> np.ndarray:
    live = (r1 > 0) & (r2 > 0)
    r1, r2 = np.where(live, r1, 1.0), np.where(live, r2, 1.0)
    if second_is_float:
        s = r1 / r1.max()
    elif first_is_float:
        s = r2.max() / r2
    else:
        s = np.sqrt(r1 / r2)
    return np.clip(np.where(live, s, 1.0), *SCALE_LIMITS)


def _scale_pair(first: FoldedLayer, second: FoldedLayer, s: np.ndarray) -> tuple[FoldedLayer, FoldedLayer]:
    shape2 = (-1,) + (1,) * (second.weight.ndim - 1) if _is_depthwise(second) else (1, -1)
    first = dataclasses.replace(first, weight=(first.weight / s.reshape(-1, 1, 1, 1)).astype(np.float32),
                                bias=(first.bias / s).astype(np.float32))
    second = dataclasses.replace(second, weight=(second.weight * s.reshape(shape2)).astype(np.float32))
    return first, second


def equalize(layers: list[FoldedLayer], is_float=lambda layer: False) -> list[FoldedLayer]:
    """The same network with every equalizable pair rescaled; ``is_float(layer)`` says which
    layers will be stored as floats (those absorb all of their partner's spread)."""
    out = list(layers)
    for i in range(len(out) - 1):
        first, second = out[i], out[i + 1]
        if equalizable(first, second) and not (is_float(first) and is_float(second)):
            r1 = _channel_ranges(first.weight, 0)
            r2 = _channel_ranges(second.weight, 0 if _is_depthwise(second) else 1)
            out[i], out[i + 1] = _scale_pair(first, second, _scales(r1, r2, is_float(first), is_float(second)))
    return out
