"""Calibration for weight quantization: layer inputs of a folded StudentNet on real or synthetic images,
GPTQ rounding onto a fixed min-max grid, and bias correction.

GPTQ (Frantar et al., ICLR 2023; the OBQ update of Hassibi & Stork) quantizes a layer's weights one
input column at a time and pushes each rounding error onto the columns not yet quantized, weighted by
the inverse Hessian of the layer's inputs, so ``Q x`` tracks ``W x`` on the data rather than ``Q ≈ W``.
Bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019) then shifts each bias by the mean
output error. Layers are processed in order on the already-quantized model's activations, so each
layer also compensates for the errors upstream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from edge.fold import FoldedLayer

DAMPING = 0.01


def synthetic_images(count: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """Random images with a natural-image power spectrum (amplitude ~ 1/f^1.5), in 0..1.

    Used when no calibration folder is given: early conv layers see edges and smooth regions
    in proportions close to photos', which uniform noise does not give them.
    """
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fy ** 2 + fx ** 2)
    radius[0, 0] = 1.0
    shape = (count, channels, size, size // 2 + 1)
    spectrum = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / radius ** 1.5
    images = np.fft.irfft2(spectrum, s=(size, size))
    images -= images.mean(axis=(2, 3), keepdims=True)
    images *= 0.25 / images.std(axis=(1, 2, 3), keepdims=True)
    images += rng.uniform(0.3, 0.6, size=(count, channels, 1, 1))
    return np.clip(images, 0, 1).astype(np.float32)


def pre_activation(layer: FoldedLayer, x: torch.Tensor, weight, bias) -> torch.Tensor:
    """The layer's output before its activation; weight and bias as numpy arrays or (trainable) tensors."""
    w, b = torch.as_tensor(weight), torch.as_tensor(bias)
    if layer.kind == "fc":
        return F.linear(x.mean((2, 3)), w, b)
    k = weight.shape[-1]
    return F.conv2d(x, w, b, padding=k // 2, groups=layer.groups)


def activation(layer: FoldedLayer, y: torch.Tensor) -> torch.Tensor:
    if layer.relu6:
        y = y.clamp(0, 6)
    return F.max_pool2d(y, 2) if layer.pool_after else y


def _input_rows(layer: FoldedLayer, x: torch.Tensor) -> torch.Tensor:
    """Layer input as rows that each output multiplies by its weights: (groups, rows, weights per output)."""
    if layer.kind == "fc":
        return x.mean((2, 3))[None]
    k = layer.weight.shape[-1]
    if k == 1 and layer.groups == 1:
        return x.permute(0, 2, 3, 1).reshape(1, -1, x.shape[1])
    patches = F.unfold(x, k, padding=k // 2)  # (N, C*k*k, L)
    if layer.groups == 1:
        return patches.permute(0, 2, 1).reshape(1, -1, patches.shape[1])
    n, _, positions = patches.shape
    return patches.reshape(n, x.shape[1], k * k, positions).permute(1, 0, 3, 2).reshape(x.shape[1], -1, k * k)


def grouped(layer: FoldedLayer, array: np.ndarray) -> torch.Tensor:
    """Weights (or per-row grid bounds) as (groups, outputs per group, weights per output)."""
    flat = torch.from_numpy(np.array(array, dtype=np.float64)).reshape(array.shape[0], -1)
    return flat[:, None, :] if layer.groups > 1 else flat[None]


def grid_quantizer(lo: torch.Tensor, step: torch.Tensor, levels: int):
    """``quantize(column (G, R)) -> (codes, values)`` on the grid ``lo + step * q``, q in 0..levels
    (bounds (G, R, 1), broadcast)."""

    def quantize(column: torch.Tensor):
        q = torch.clamp(torch.round((column - lo[..., 0]) / step[..., 0]), 0, levels)
        return q, lo[..., 0] + q * step[..., 0]

    return quantize


def gptq_codes(weights: torch.Tensor, hessian: torch.Tensor, quantize, damping: float = DAMPING) -> torch.Tensor:
    """Codes for ``weights`` (G, R, K) from ``quantize(column (G, R)) -> (codes, values)``
    (`grid_quantizer`, `edge.export.kmeans.codebook_quantizer`), assigning column by column with GPTQ
    error feedback through ``hessian`` (G, K, K).

    Columns go in order of decreasing Hessian diagonal ("act-order"): the inputs that carry the
    most energy are rounded first, while the most columns are left to absorb their error.
    """
    order = torch.argsort(torch.diagonal(hessian, dim1=1, dim2=2), dim=1, descending=True)  # (G, K)
    w = torch.gather(weights, 2, order[:, None, :].expand_as(weights)).clone()
    h = torch.gather(torch.gather(hessian, 1, order[:, :, None].expand_as(hessian)), 2,
                     order[:, None, :].expand_as(hessian))
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0
    h.diagonal(dim1=1, dim2=2)[dead] = 1.0
    h += torch.eye(h.shape[-1], dtype=h.dtype) * (damping * torch.diagonal(h, dim1=1, dim2=2).mean(1))[:, None, None]
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros_like(w, dtype=torch.int64)
    unsort = torch.argsort(order, dim=1)
    for j in range(w.shape[-1]):
        q, value = quantize(w[:, :, j])
        codes[:, :, j] = q.to(torch.int64)
        error = (w[:, :, j] - value) / upper[:, j, j][:, None]
        w[:, :, j + 1:] -= error[:, :, None] * upper[:, j, j + 1:][:, None, :]
    return torch.gather(codes, 2, unsort[:, None, :].expand_as(codes))


@torch.no_grad()
def calibrate(layers: list[FoldedLayer], images: np.ndarray, encode) -> tuple[list[FoldedLayer], dict]:
    """Encode ``layers`` in order on ``images`` and correct each bias so the mean pre-activation matches fp32.

    ``encode(layer, input_rows)`` returns the layer's weight encoding (anything with ``decode()``);
    ``input_rows()`` gives the layer's input on the already-quantized model, as `_input_rows` lays it out.
    Returns the layers with quantized weights and corrected biases, and the encodings by layer name.
    """
    x_float = x_quant = torch.from_numpy(images)
    out, encodings = [], {}
    for layer in layers:
        encodings[layer.name] = encode(layer, lambda: _input_rows(layer, x_quant).double())
        weight = encodings[layer.name].decode()
        y_float = pre_activation(layer, x_float, layer.weight, layer.bias)
        y_quant = pre_activation(layer, x_quant, weight, layer.bias)
        dims = (0,) if layer.kind == "fc" else (0, 2, 3)
        bias = (layer.bias + (y_float - y_quant).mean(dims).numpy()).astype(np.float32)
        out.append(dataclasses.replace(layer, weight=weight, bias=bias))
        x_float = activation(layer, y_float)
        x_quant = activation(layer, pre_activation(layer, x_quant, weight, bias))
    return out, encodings


@torch.no_grad()
def folded_forward(layers: list[FoldedLayer], images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits of the folded model (torch, fp32) for float32 NCHW ``images``."""
    outputs = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))
        for layer in layers:
            x = activation(layer, pre_activation(layer, x, layer.weight, layer.bias))
        outputs.append(x.numpy())
    return np.concatenate(outputs)
