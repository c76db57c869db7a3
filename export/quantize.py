"""Decide how each weight tensor of a folded StudentNet is stored, and compute its codes.

``QuantSpec`` is what the user asks for (``--quant``, ``--per-channel``, ``--method``);
`encode_layers` turns folded layers into per-tensor encodings for the graph builder:

- ``fp32`` / ``fp16``: float tensors.
- ``uintN --method minmax``: the homework's per-tensor (or per-channel) min-max rounding, every weight.
- ``uintN --method gptq`` (default): cross-layer equalization (exact, `export.equalize`), then the
  min-max grid, GPTQ rounding on calibration images, bias correction; layers with fewer than ``fp16_below`` weights (the first conv and the thin early
  blocks, the most sensitive and together ~1.4 KB) stay fp16. Without calibration images, synthetic
  1/f images make it data-free.
Biases are stored fp16 for integer formats (they are a few KB and fp16 keeps them to 1e-3 relative).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from edge.fold import FoldedLayer
from edge.quant import FloatWeight, minmax_encode

METHODS = ("minmax", "gptq")


@dataclass(frozen=True)
class QuantSpec:
    weights: str = "fp32"  # fp32 | fp16 | uint1..uint8 | int8 (ONNX Runtime QDQ, int8 compute)
    per_channel: bool = False
    method: str = "gptq"
    fp16_below: int = 1024

    def __post_init__(self):
        if self.weights not in ("fp32", "fp16", "int8") and not (
                self.weights.startswith("uint") and self.weights[4:].isdigit() and 1 <= int(self.weights[4:]) <= 8):
            raise ValueError(f"unknown weight format {self.weights!r}: use fp32, fp16, uint8 (uint1..uint8) or int8")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")

    @property
    def bits(self) -> int | None:
        return int(self.weights[4:]) if self.weights.startswith("uint") else None

    @property
    def range_dtype(self):
        """How the grids' offsets and steps are stored: fp16 per channel (many), exact per tensor (two)."""
        return np.float16 if self.per_channel else None

    @property
    def calibrated(self) -> bool:
        return self.weights == "int8" or (self.bits is not None and self.method == "gptq")

    def describe(self) -> dict:
        info = {"weights": self.weights, "per_channel": self.per_channel}
        if self.weights == "int8":
            info.update(activations="uint8", format="QDQ via onnxruntime.quantization (int8 compute)")
        if self.bits:
            info.update(method=self.method, dequantize="at load (constant-folded)", bias="fp16")
            if self.calibrated:
                info.update(fp16_below=self.fp16_below, equalization="cross-layer, searched", bias_correction=True)
        return info


def _float_encodings(layers: list[FoldedLayer], dtype) -> dict[str, FloatWeight]:
    return {layer.name: FloatWeight(layer.weight.astype(dtype)) for layer in layers}


def _gptq_encoder(spec: QuantSpec):
    import torch

    from export.calibrate import grouped, gptq_codes

    def encode(layer: FoldedLayer, input_rows):
        if layer.weight.size < spec.fp16_below:
            return FloatWeight(layer.weight.astype(np.float16))
        grid = minmax_encode(layer.weight, spec.bits, spec.per_channel, range_dtype=spec.range_dtype)
        rows = input_rows()
        hessian = torch.einsum("gmk,gml->gkl", rows, rows)
        per_row = (layer.weight.shape[0],) + (1,) * (layer.weight.ndim - 1)
        lo = grouped(layer, np.broadcast_to(grid.offset, per_row))
        step = grouped(layer, np.broadcast_to(np.where(grid.step > 0, grid.step, 1.0), per_row))
        codes = gptq_codes(grouped(layer, layer.weight), hessian, lo, step, grid.levels)
        return dataclasses.replace(grid, q=codes.reshape(layer.weight.shape).numpy().astype(np.uint8))

    return encode


def encode_layers(layers: list[FoldedLayer], spec: QuantSpec, calibration: np.ndarray | None = None,
                  layer_bits: dict[str, int] | None = None):
    """-> (layers with the weights and biases the file will hold, {layer name: weight encoding}).

    ``layer_bits`` gives named layers another bit width (mixed precision)."""
    if spec.bits is None:
        return layers, _float_encodings(layers, np.float16 if spec.weights == "fp16" else np.float32)

    def bits_of(layer: FoldedLayer) -> int:
        return (layer_bits or {}).get(layer.name, spec.bits)

    if spec.method == "minmax":
        return layers, {l.name: minmax_encode(l.weight, bits_of(l), spec.per_channel, range_dtype=spec.range_dtype)
                        for l in layers}
    from export.calibrate import calibrate
    from export.equalize import equalize

    layers = equalize(layers, lambda layer: layer.weight.size < spec.fp16_below, calibration, spec.bits,
                      spec.per_channel)
    encoders = {bits: _gptq_encoder(dataclasses.replace(spec, weights=f"uint{bits}"))
                for bits in {spec.bits, *(layer_bits or {}).values()}}
    return calibrate(layers, calibration, lambda layer, rows: encoders[bits_of(layer)](layer, rows))
