"""The weight-format registry: each family of `edge.core.weight_formats.FORMATS` (``fp32``, ``fp16``,
``uint`` for uintN, ``kmeans`` for kmeansK, ``int8``) -> the `FormatHandler` that implements it.

A handler says whether its format calibrates on images, what it adds to the file's metadata, how it
encodes a folded layer's weight without data (`FormatHandler.encodings`) and on calibration images
(`FormatHandler.encoder`, used by `edge.export.quantize.encode_model`), and how its encodings are written
into the float ONNX graph (`FormatHandler.apply`, used by `edge.export.exporter.export_onnx`). A handler
class registers itself with ``@register_format(family)``; the modules of `edge.export.formats` hold one
family each and are imported by the package, so looking a family up always finds every handler.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from edge.codec.quant import FloatWeight
from edge.core.registry import Registry
from edge.export.onnx_graph import apply_weight_formats, compact
from edge.models.fold import FoldedLayer


class FormatHandler:
    """The implementation of one format family. ``spec`` arguments are `edge.export.quantize.QuantSpec`s of
    that family. The default writes every layer's weight as encoded and its bias as ``bias_dtype``."""

    family = ""  # set by `register_format`
    bias_dtype = np.float16  # how the file stores biases

    def calibrates(self, spec) -> bool:
        """Whether exporting ``spec`` needs calibration images (synthetic ones when none are given)."""
        return False

    def describe(self, spec) -> dict:
        """What the file's metadata says about ``spec``'s encoding, after its weights and per-channel entries."""
        return {}

    def encodings(self, layers: list[FoldedLayer], spec, layer_bits: dict[str, int]) -> dict:
        """{layer name: weight encoding} without data (``layer_bits``: other bit widths of named layers)."""
        raise NotImplementedError

    def encoder(self, spec, layer_bits: dict[str, int]) -> Callable | None:
        """``encode(layer, hessian) -> encoding`` for GPTQ-style calibration (`edge.export.calibrate`), or
        None where the weights are encoded data-free (`encodings`)."""
        return None

    def encoded_entries(self, spec, encodings: dict) -> dict:
        """Metadata entries that depend on the encodings chosen (after calibration, layer bits)."""
        return {}

    def apply(self, model: onnx.ModelProto, layers: list[FoldedLayer], encodings: dict, spec,
              calibration: np.ndarray | None) -> onnx.ModelProto:
        """The float graph ``model`` (its weights those of ``layers``) with the format applied, compacted."""
        apply_weight_formats(model, layers, encodings, self.bias_dtype)
        return compact(model)


def float_encodings(layers: list[FoldedLayer], dtype) -> dict[str, FloatWeight]:
    """Every layer's weight as a float tensor of ``dtype``."""
    return {layer.name: FloatWeight(layer.weight.astype(dtype)) for layer in layers}


_HANDLERS = Registry("weight format family", "edge.export.formats", tag="family")


def register_format(family: str):
    """Register the decorated `FormatHandler` subclass (one instance) as ``family``'s implementation."""
    return _HANDLERS.register(family)


def format_handler(family: str) -> FormatHandler:
    """The handler of a `FORMATS` row's family (``"uint"`` for uint4)."""
    return _HANDLERS[family]


def families() -> tuple[str, ...]:
    """The families registered, in registration order."""
    return tuple(_HANDLERS)
