"""``int8``: ONNX Runtime's calibrated QDQ quantization (int8 weights, uint8 activations, int8 kernels,
`edge.export.int8`), applied to the fp32 graph on the calibration images."""

from __future__ import annotations

import numpy as np

from edge.export.formats.registry import FormatHandler, float_encodings, register_format
from edge.export.onnx_graph import compact


@register_format("int8")
class Int8(FormatHandler):
    def calibrates(self, spec) -> bool:
        return True

    def describe(self, spec):
        return {"activations": "uint8", "format": "QDQ via onnxruntime.quantization (int8 compute)"}

    def encodings(self, layers, spec, layer_bits):
        return float_encodings(layers, np.float32)  # the fp32 graph that ONNX Runtime quantizes

    def apply(self, model, layers, encodings, spec, calibration):
        from edge.export.int8 import quantize_qdq

        return compact(quantize_qdq(model, calibration, spec.per_channel))
