"""Calibrated int8 activations and weights through ONNX Runtime's own tool (QDQ format).

A separate format from ours: ``quantize_static`` inserts Quantize/DequantizeLinear pairs around
activations and int8 weights (per channel), so ONNX Runtime can run int8 kernels. It is here to
be measured next to our load-time-dequantized uint8 (size, speed, agreement), not as a default.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static


class _Images(CalibrationDataReader):
    def __init__(self, input_name: str, images: np.ndarray):
        self._batches = iter([{input_name: images[i:i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self._batches, None)


def quantize_qdq(model: onnx.ModelProto, images: np.ndarray, per_channel: bool = True) -> onnx.ModelProto:
    """The fp32 ``model`` with int8 weights and uint8 activations calibrated (min-max) on ``images``."""
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, source)
        quantize_static(source, target, _Images(input_name, images), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        return onnx.load(target)
