"""``fp32`` and ``fp16``: float weights (``--low-rank``: SVD factors of the pointwise convs and the
classifier, `edge.export.lowrank`). fp16 stores weights and biases as float16, cast to float32 in the graph."""

from __future__ import annotations

import numpy as np

from edge.export.formats.registry import FormatHandler, float_encodings, register_format


class _FloatFormat(FormatHandler):
    dtype = np.float32  # how the file stores weights

    def describe(self, spec):
        if spec.low_rank is None:
            return {}
        return {"low_rank": f"pointwise convs and classifier as U·V keeping {spec.low_rank:g} of the energy "
                            "(folded at load)"}

    def encodings(self, layers, spec, layer_bits):
        if spec.low_rank is not None:
            from edge.export.lowrank import low_rank_encodings

            return low_rank_encodings(layers, spec.low_rank, self.dtype)
        return float_encodings(layers, self.dtype)


@register_format("fp32")
class Fp32(_FloatFormat):
    dtype = bias_dtype = np.float32


@register_format("fp16")
class Fp16(_FloatFormat):
    dtype = bias_dtype = np.float16
