"""``kmeansK``: weight sharing, ceil(log2 K)-bit indices into an fp16 codebook of K values per tensor
(per channel: times an fp16 scale per output channel), decoded by Gather (`edge.export.kmeans`: plain
k-means data-free, Hessian-weighted k-means with GPTQ assignment calibrated)."""

from __future__ import annotations

from edge.export.formats.coded import CodedFormat
from edge.export.formats.registry import register_format


def _scaled(layer, spec) -> bool:
    """--per-channel kmeansK: whether the layer's channels get their own scale (2 bytes each), which
    pays where a channel has more weights than the codebook has values (not a depthwise 3x3's 9)."""
    return spec.per_channel and layer.weight[0].size > spec.codebook_size


@register_format("kmeans")
class Kmeans(CodedFormat):
    def encode(self, layer, spec, layer_bits):
        from edge.export.kmeans import plain_codebook

        return plain_codebook(layer.weight, spec.codebook_size, _scaled(layer, spec))

    def encode_calibrated(self, layer, hessian, spec, layer_bits):
        from edge.export.kmeans import calibrated_codebook

        return calibrated_codebook(layer, hessian, spec.codebook_size, _scaled(layer, spec))

    def layout(self, spec):
        return {"codebook": f"{spec.codebook_size} fp16 values per tensor"
                            + (", scaled per output channel (fp16)" if spec.per_channel else "")}
