"""The weight formats edge writes, in one table: ``--quant`` validation (`edge.export.quantize.QuantSpec`),
the ``--max-drop`` candidates (`edge.export.select`) and `edge compress` read it from here.

A format is named ``fp32``, ``fp16``, ``int8``, ``uintN`` (N = 1..8) or ``kmeansK`` (K = 2..256);
`edge.export.quantize.QuantSpec` holds one with its options. Every option a format lists in
``options`` is a `QuantSpec` field; ``methods`` are the calibrations that apply to it
(``gptq``: Hessians of the layer inputs on calibration images; ``minmax``: none, data-free).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFormat:
    family: str  # the name without its size: "uint" for uint4
    syntax: str  # how users write it
    description: str
    sizes: range | None = None  # the N of uintN / K of kmeansK
    options: tuple[str, ...] = ()  # QuantSpec fields that apply
    methods: tuple[str, ...] = ()  # calibrations that apply, the default first

    def bits(self, size: int) -> int:
        """Bits per stored code."""
        return size if self.family == "uint" else max(1, (size - 1).bit_length())


CODED_OPTIONS = ("per_channel", "method", "entropy")

FORMATS = (
    WeightFormat("fp32", "fp32", "float32 weights", options=("low_rank",)),
    WeightFormat("fp16", "fp16", "float16 weights and biases, cast to float32 at load", options=("low_rank",)),
    WeightFormat("uint", "uintN", "N-bit codes (N = 1..8, densely packed) on a min-max grid per tensor, or per "
                 "output channel (fp16 offset + step), dequantized at load", range(1, 9), CODED_OPTIONS,
                 ("gptq", "minmax")),
    WeightFormat("kmeans", "kmeansK", "weight sharing: ceil(log2 K)-bit indices (K = 2..256, densely packed) into an "
                 "fp16 codebook per tensor (per channel: times an fp16 scale per output channel); gptq: k-means weighted by the input Hessian, "
                 "GPTQ assignment, least-squares centroids (optionally KD-trained); minmax: plain k-means, no data",
                 range(2, 257), CODED_OPTIONS + ("train_epochs",), ("gptq", "minmax")),
    WeightFormat("int8", "int8", "ONNX Runtime's calibrated QDQ (int8 weights and activations, int8 kernels)",
                 options=("per_channel",)),
)

# The --max-drop candidates (and compress's quantization-only frontier), smallest file first on
# the TA student (bench/results/weight_sharing_*.md): (format, QuantSpec options).
CANDIDATES = (
    ("kmeans16", {"entropy": True}),
    ("uint4", {"per_channel": True, "entropy": True}),
    ("kmeans16", {"per_channel": True, "entropy": True}),
    ("uint4", {"per_channel": True}),
    ("kmeans32", {"entropy": True}),
    ("uint6", {"per_channel": True, "entropy": True}),
    ("uint8", {}),
    ("uint8", {"per_channel": True}),
    ("fp16", {}),
    ("fp32", {}),
)


def parse_format(name: str) -> tuple[WeightFormat, int | None]:
    """``"kmeans16"`` -> (the kmeans row, 16); ValueError naming the valid formats otherwise."""
    for fmt in FORMATS:
        if fmt.sizes is None and name == fmt.family:
            return fmt, None
        tail = name[len(fmt.family):]
        if fmt.sizes is not None and name.startswith(fmt.family) and tail.isdigit() and int(tail) in fmt.sizes:
            return fmt, int(tail)
    raise ValueError(f"unknown weight format {name!r}: use one of {', '.join(f.syntax for f in FORMATS)} "
                     "(uintN: N = 1..8; kmeansK: K = 2..256)")
