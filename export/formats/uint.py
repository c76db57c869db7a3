"""``uintN``: N-bit codes (N = 1..8) on a min-max grid per tensor (exact offset and step) or per output
channel (fp16), decoded as ``offset + q * step``; ``layer_bits`` gives named layers another width (mixed
precision). Calibrated: GPTQ rounding on that grid (`edge.export.calibrate`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from edge.codec.quant import minmax_encode
from edge.export.formats.coded import CodedFormat
from edge.export.formats.registry import register_format


@register_format("uint")
class Uint(CodedFormat):
    def encode(self, layer, spec, layer_bits):
        return minmax_encode(layer.weight, layer_bits.get(layer.name, spec.bits), spec.per_channel,
                             range_dtype=spec.range_dtype)

    def encode_calibrated(self, layer, hessian, spec, layer_bits):
        from edge.export.calibrate import grid_quantizer, grouped, gptq_codes

        grid = self.encode(layer, spec, layer_bits)
        per_row = (layer.weight.shape[0],) + (1,) * (layer.weight.ndim - 1)
        lo = grouped(layer, np.broadcast_to(grid.offset, per_row))
        step = grouped(layer, np.broadcast_to(np.where(grid.step > 0, grid.step, 1.0), per_row))
        codes = gptq_codes(grouped(layer, layer.weight), hessian, grid_quantizer(lo, step, grid.levels))
        return dataclasses.replace(grid, q=codes.reshape(layer.weight.shape).numpy().astype(np.uint8))
