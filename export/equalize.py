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

The scales: ``s_c = r1_c^(1 - b) / r2_c^b`` for channel ranges ``r1`` (first layer's rows) and ``r2``
(second layer's channels) leaves the first layer's rows spanning ``(r1 r2)^b`` and the second's
channels ``(r1 r2)^(1 - b)``: ``b = 0`` gives the first layer one range for every row, ``b = 1`` the
second, ``b = 1/2`` is DFQ's choice. When one layer stays float (small layers are kept fp16) it
absorbs all of the spread. With calibration images each pair takes the balance (or no scaling)
whose min-max-rounded pair output is closest to float's, since DFQ's midpoint is not always best:
a depthwise conv with 9 weights per channel loses more to a coarse grid than a pointwise one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edge.fold import FoldedLayer
from edge.quant import minmax_encode
from edge.export.calibrate import activation, pre_activation

SCALE_LIMITS = (1e-3, 1e3)  # keep fp16 copies of the scaled weights far from under/overflow
BALANCES = (0.0, 0.25, 0.5, 0.75, 1.0)
SEARCH_IMAGES = 32


def _is_depthwise(layer: FoldedLayer) -> bool:
    return layer.kind == "conv" and layer.groups > 1 and layer.groups == layer.weight.shape[0]


def equalizable(first: FoldedLayer, second: FoldedLayer) -> bool:
    """True when only positive-homogeneous ops (pooling, padding) lie between the two layers."""
    return first.kind == "conv" and first.groups == 1 and not first.relu6 and (
        _is_depthwise(second) or second.kind == "fc")


def _channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(weight.ndim) if a != axis)
    return np.abs(weight.astype(np.float64)).max(axis=other)


def _scales(first: FoldedLayer, second: FoldedLayer, balance: float) -> np.ndarray:
    r1 = _channel_ranges(first.weight, 0)
    r2 = _channel_ranges(second.weight, 0 if _is_depthwise(second) else 1)
    live = (r1 > 0) & (r2 > 0)
    log_s = (1 - balance) * np.log(np.where(live, r1, 1.0)) - balance * np.log(np.where(live, r2, 1.0))
    log_s -= log_s[live].mean() if live.any() else 0.0
    return np.clip(np.where(live, np.exp(log_s), 1.0), *SCALE_LIMITS)


def _scale_pair(first: FoldedLayer, second: FoldedLayer, s: np.ndarray) -> tuple[FoldedLayer, FoldedLayer]:
    shape2 = (-1,) + (1,) * (second.weight.ndim - 1) if _is_depthwise(second) else (1, -1)
    first = dataclasses.replace(first, weight=(first.weight / s.reshape(-1, 1, 1, 1)).astype(np.float32),
                                bias=(first.bias / s).astype(np.float32))
    second = dataclasses.replace(second, weight=(second.weight * s.reshape(shape2)).astype(np.float32))
    return first, second


def _fixed_balance(first: FoldedLayer, second: FoldedLayer, is_float) -> tuple[FoldedLayer, FoldedLayer]:
    """All of the spread into the float layer when there is one, else DFQ's midpoint."""
    balance = 0.0 if is_float(second) else 1.0 if is_float(first) else 0.5
    return _scale_pair(first, second, _scales(first, second, balance))


def _rounded(layer: FoldedLayer, is_float, bits: int, per_channel: bool) -> FoldedLayer:
    if is_float(layer):
        return layer
    return dataclasses.replace(layer, weight=minmax_encode(layer.weight, bits, per_channel).decode())


def _pair_output(first: FoldedLayer, second: FoldedLayer, x: torch.Tensor) -> torch.Tensor:
    y = activation(first, pre_activation(first, x, first.weight, first.bias))
    return pre_activation(second, y, second.weight, second.bias)


def _searched_balance(first: FoldedLayer, second: FoldedLayer, x: torch.Tensor, is_float, bits: int,
                      per_channel: bool) -> tuple[FoldedLayer, FoldedLayer]:
    """No scaling or one of `BALANCES`, whichever min-max-rounded pair output is closest to float's."""
    if is_float(first) or is_float(second):
        return _fixed_balance(first, second, is_float)
    reference = _pair_output(first, second, x)
    options = [(first, second)] + [_scale_pair(first, second, _scales(first, second, b)) for b in BALANCES]

    def error(pair):
        rounded = [_rounded(layer, is_float, bits, per_channel) for layer in pair]
        return float(torch.square(_pair_output(*rounded, x) - reference).mean())

    return min(options, key=error)


@torch.no_grad()
def equalize(layers: list[FoldedLayer], is_float=lambda layer: False, images: np.ndarray | None = None,
             bits: int = 8, per_channel: bool = False) -> list[FoldedLayer]:
    """The same network with every equalizable pair rescaled; ``is_float(layer)`` says which layers
    will be stored as floats. With ``images``, each pair's scaling is chosen by its output error
    after min-max rounding to ``bits``; without, DFQ's balance is used."""
    out = list(layers)
    x = None if images is None else torch.from_numpy(np.ascontiguousarray(images[:SEARCH_IMAGES]))
    for i in range(len(out)):
        first, second = out[i], out[i + 1] if i + 1 < len(out) else None
        if second is not None and equalizable(first, second) and not (is_float(first) and is_float(second)):
            out[i], out[i + 1] = _fixed_balance(first, second, is_float) if x is None else \
                _searched_balance(first, second, x, is_float, bits, per_channel)
        if x is not None:
            x = activation(out[i], pre_activation(out[i], x, out[i].weight, out[i].bias))
    return out
