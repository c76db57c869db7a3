"""The weight formats edge writes, in one table (pure data: the CLI reads it without importing
`edge.export`): ``--quant`` validation (`edge.export.quantize.QuantSpec`),
the CLI's ``--quant``/``--method`` choices and help, `edge bench`'s formats, the ``--max-drop``
candidates (`edge.export.select`) and `edge compress` read it from here.

A format is named ``fp32``, ``fp16``, ``int8``, ``uintN`` (N = 1..8) or ``kmeansK`` (K = 2..256);
`edge.export.quantize.QuantSpec` holds one with its options; a row's ``family`` names its implementation
(`edge.export.formats`, one handler per family). Every option a format lists in
``options`` is a `QuantSpec` field; ``methods`` are the calibrations that apply to it
(`METHODS`). `edge bench` and `edge slim` name a format with its method as ``FORMAT[:METHOD]``
(``uint8:minmax``, `parse_choice`).
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
    codebook: bool = False  # the size counts codebook values (kmeansK), not bits (uintN)

    def bits(self, size: int) -> int:
        """Bits per stored code."""
        return max(1, (size - 1).bit_length()) if self.codebook else size


METHODS = {  # the calibrations of integer formats, the default first
    "gptq": "calibrated on images (synthetic ones when none are given): GPTQ rounding (kmeansK: k-means weighted by "
            "the input Hessian, GPTQ assignment, least-squares centroids) + bias correction, tiny layers fp16",
    "minmax": "the homework's plain rounding (plain k-means) of every weight, data-free",
}
DEFAULT_METHOD = next(iter(METHODS))
DATA_FREE = "minmax"
CODED_OPTIONS = ("per_channel", "method", "entropy", "train_epochs", "fp16_below")
FP16_BELOW = 1024  # calibrated uintN/kmeansK: layers with fewer weights stay fp16 (--fp16-below)

FORMATS = (
    WeightFormat("fp32", "fp32", "float32 weights", options=("low_rank",)),
    WeightFormat("fp16", "fp16", "float16 weights and biases, cast to float32 at load", options=("low_rank",)),
    WeightFormat("uint", "uintN", "N-bit codes (N = 1..8, densely packed) on a min-max grid per tensor, or per "
                 "output channel (fp16 offset + step), dequantized at load", range(1, 9), CODED_OPTIONS,
                 tuple(METHODS)),
    WeightFormat("kmeans", "kmeansK", "weight sharing: ceil(log2 K)-bit indices (K = 2..256, densely packed) into an "
                 "fp16 codebook per tensor (per channel: times an fp16 scale per output channel), decoded at load",
                 range(2, 257), CODED_OPTIONS, tuple(METHODS), codebook=True),
    WeightFormat("int8", "int8", "ONNX Runtime's calibrated QDQ (int8 weights and activations, int8 kernels)",
                 options=("per_channel",)),
)

# The --max-drop candidates, smallest file first on the TA student (bench/results/max_drop_ta_student.md):
# (format, QuantSpec options). `edge compress` measures its own list (edge.workflows.compress.FORMATS).
CANDIDATES = (
    ("kmeans16", {"entropy": True}),
    ("uint4", {"per_channel": True, "entropy": True}),
    ("kmeans16", {"per_channel": True, "entropy": True}),
    ("uint4", {"per_channel": True}),
    ("kmeans16", {"per_channel": True, "entropy": True, "fp16_below": 3000}),
    ("kmeans32", {"entropy": True}),
    ("uint6", {"per_channel": True, "entropy": True}),
    ("uint8", {}),
    ("uint8", {"per_channel": True}),
    ("fp16", {}),
    ("fp32", {}),
)
# What `edge bench` exports a checkpoint to unless --quant says otherwise.
BENCH_FORMATS = ("fp32", "fp16", "uint8")


def parse_format(name: str) -> tuple[WeightFormat, int | None]:
    """``"kmeans16"`` -> (the kmeans row, 16); ValueError naming the valid formats otherwise."""
    for fmt in FORMATS:
        if fmt.sizes is None and name == fmt.family:
            return fmt, None
        tail = name[len(fmt.family):]
        if fmt.sizes is not None and name.startswith(fmt.family) and tail.isascii() and tail.isdigit() \
                and str(int(tail)) == tail and int(tail) in fmt.sizes:  # as written: no "kmeans016", no "uint٨"
            return fmt, int(tail)
    sizes = "; ".join(f"{f.syntax}: {f.syntax[-1]} = {f.sizes.start}..{f.sizes.stop - 1}" for f in FORMATS if f.sizes)
    raise ValueError(f"unknown weight format {name!r}: use one of {', '.join(f.syntax for f in FORMATS)} ({sizes})")


def parse_choice(text: str) -> tuple[str, dict]:
    """``"uint8:minmax"`` -> ("uint8", {"method": "minmax"}), ``"fp16"`` -> ("fp16", {}): a format as `edge bench`
    and `edge slim` name it (``FORMAT[:METHOD]``), checked against the table; ValueError otherwise."""
    name, colon, method = text.strip().partition(":")
    fmt, _ = parse_format(name)
    if not colon:
        return name, {}
    if method not in fmt.methods:
        reason = f"{name}'s method is one of {', '.join(fmt.methods)}" if fmt.methods \
            else f"{name} has no method to choose (FORMAT[:METHOD] is for integer codes)"
        raise ValueError(f"{text!r}: {reason}")
    return name, {"method": method}


def data_free(choice: str) -> str:
    """``"uint8"`` -> ``"uint8:minmax"``: the choice with the data-free method where the format has methods."""
    name, options = parse_choice(choice)
    return f"{name}:{DATA_FREE}" if parse_format(name)[0].methods and not options else choice


def syntax() -> str:
    """``fp32|fp16|uintN|kmeansK|int8``: how --quant is written."""
    return "|".join(f.syntax for f in FORMATS)


def help_text() -> str:
    """One clause per format, for --help."""
    return "; ".join(f"{f.syntax}: {f.description}" for f in FORMATS)
