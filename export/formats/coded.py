"""What uintN and kmeansK share: integer codes per weight, calibrated (``--method gptq``: GPTQ on calibration
images, layers with fewer than ``fp16_below`` weights kept fp16) or data-free (``--method minmax``), biases
fp16, decoded at load (constant-folded by ONNX Runtime)."""

from __future__ import annotations

import numpy as np

from edge.codec.quant import FloatWeight
from edge.export.formats.registry import FormatHandler


class CodedFormat(FormatHandler):
    """A family of integer codes; subclasses give `encode` (data-free) and `encode_calibrated`."""

    def calibrates(self, spec) -> bool:
        return spec.method == "gptq"

    def encodings(self, layers, spec, layer_bits):
        return {layer.name: self.encode(layer, spec, layer_bits) for layer in layers}

    def encoder(self, spec, layer_bits):
        if not self.calibrates(spec):
            return None

        def encode(layer, hessian):
            if layer.weight.size < spec.fp16_below:
                return FloatWeight(layer.weight.astype(np.float16))
            return self.encode_calibrated(layer, hessian, spec, layer_bits)

        return encode

    def encode(self, layer, spec, layer_bits: dict[str, int]):
        """One layer's weight, data-free."""
        raise NotImplementedError

    def encode_calibrated(self, layer, hessian, spec, layer_bits: dict[str, int]):
        """One layer's weight fitted to its output error through its input ``hessian``."""
        raise NotImplementedError

    def layout(self, spec) -> dict:
        """The metadata entries that say how the codes are laid out (after ``code_bits``)."""
        return {}

    def describe(self, spec) -> dict:
        info = {"method": spec.method, "dequantize": "at load (constant-folded)", "bias": "fp16",
                "code_bits": spec.bits, **self.layout(spec)}
        if self.calibrates(spec):
            info.update(fp16_below=spec.fp16_below, equalization="cross-layer, searched", bias_correction=True)
        if spec.train_epochs:
            info.update(trained=f"{spec.train_epochs} epochs of KD on augmented calibration images "
                                "(edge.export.finetune)")
        if spec.entropy:
            info.update(entropy="edge.entropy: open with edge or `edge convert --to onnx`")
        return info

    def encoded_entries(self, spec, encodings):
        """How many layers --fp16-below kept as floats (all of them, on a tiny model)."""
        if not self.calibrates(spec):
            return {}
        kept = sum(isinstance(e, FloatWeight) for e in encodings.values())
        return {"fp16_layers": f"{kept} of {len(encodings)} (fewer than {spec.fp16_below:,} weights)"}
