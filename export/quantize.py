"""Decide how each weight tensor of a folded torch classifier is stored, and compute its codes.

``QuantSpec`` is what the user asks for (``--quant``, ``--per-channel``, ``--method``);
`encode_model` turns the layers of `edge.models.fold.fold_model`'s result into per-tensor encodings, through
the handler of the spec's format family (`edge.export.formats`, ``spec.handler``):

- ``fp32`` / ``fp16``: float tensors (``--low-rank``: SVD factors, `edge.export.lowrank`).
- ``uintN`` / ``kmeansK --method minmax``: the homework's min-max rounding / plain k-means, every weight, no data.
- ``uintN`` / ``kmeansK --method gptq`` (default): cross-layer equalization (exact, `edge.export.equalize`),
  then GPTQ on the min-max grid (or a Hessian-weighted codebook) on calibration images and bias
  correction (`edge.export.calibrate`); layers with fewer than ``fp16_below`` weights (the first conv
  and thin early blocks: the most sensitive, and few bytes) stay fp16. Without calibration images,
  synthetic 1/f images make it data-free.
Biases are stored fp16 for integer formats (they are a few KB and fp16 keeps them to 1e-3 relative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.export.formats.registry import FormatHandler, format_handler  # the package registers every handler
from edge.models.fold import FoldedLayer
from edge.core.weight_formats import CANDIDATES, DEFAULT_METHOD, FP16_BELOW, METHODS, WeightFormat, parse_format


@dataclass(frozen=True)
class QuantSpec:
    weights: str = "fp32"  # a format of `edge.core.weight_formats.FORMATS`: fp32 | fp16 | uintN | kmeansK | int8
    per_channel: bool = False
    method: str = DEFAULT_METHOD
    fp16_below: int = FP16_BELOW
    entropy: bool = False  # codes entropy-coded in the file (`edge.codec.entropy`): only edge's runtime opens it
    train_epochs: int = 0  # uintN/kmeansK --method gptq: trained quantization on the calibration images (export/finetune.py)
    low_rank: float | None = None  # fp32/fp16: SVD-factor pointwise convs and the classifier, keeping this energy

    def __post_init__(self):
        fmt, _ = parse_format(self.weights)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.entropy and "entropy" not in fmt.options:
            raise ValueError(f"--entropy codes the integer codes of uintN and kmeansK; {self.weights} has none")
        if self.train_epochs and "train_epochs" not in fmt.options:
            raise ValueError(f"--train-epochs trains the codes of uintN and kmeansK; {self.weights} has none")
        if self.low_rank is not None and ("low_rank" not in fmt.options or not 0 < self.low_rank <= 1):
            raise ValueError(f"--low-rank takes an energy in (0, 1] and factors fp32 or fp16 weights, "
                             f"not {self.weights} at {self.low_rank}")
        if self.train_epochs and self.method != "gptq":
            raise ValueError("--train-epochs fine-tunes on calibration images: use it with --method gptq")

    @property
    def format(self) -> WeightFormat:
        return parse_format(self.weights)[0]

    @property
    def bits(self) -> int | None:
        """Bits per stored code (uintN, kmeansK); None for float and int8 formats."""
        fmt, size = parse_format(self.weights)
        return None if size is None else fmt.bits(size)

    @property
    def codebook_size(self) -> int | None:
        fmt, size = parse_format(self.weights)
        return size if fmt.codebook else None

    @property
    def range_dtype(self):
        """How the grids' offsets and steps are stored: fp16 per channel (many), exact per tensor (two)."""
        return np.float16 if self.per_channel else None

    @property
    def handler(self) -> FormatHandler:
        """The implementation of this format's family (`edge.export.formats`)."""
        return format_handler(self.format.family)

    @property
    def calibrated(self) -> bool:
        return self.handler.calibrates(self)

    @property
    def label(self) -> str:
        """Short display name: ``kmeans16 per-channel entropy fp16-below 3000``."""
        return " ".join([self.weights] + ["per-channel"] * self.per_channel + ["entropy"] * self.entropy
                        + [f"fp16-below {self.fp16_below}"] * (self.calibrated and self.fp16_below != FP16_BELOW)
                        + [f"trained {self.train_epochs}"] * bool(self.train_epochs)
                        + ([f"low-rank {self.low_rank:g}"] if self.low_rank is not None else []))

    def describe(self) -> dict:
        """The file's ``edge.quant`` metadata: the format and what its handler says about the encoding."""
        return {"weights": self.weights, "per_channel": self.per_channel, **self.handler.describe(self)}


def candidate_specs() -> tuple[QuantSpec, ...]:
    """`edge.core.weight_formats.CANDIDATES` as specs, smallest file first."""
    return tuple(QuantSpec(weights, **options) for weights, options in CANDIDATES)


@dataclass(frozen=True)
class Matching:
    """What ``spec.train_epochs`` trains the stored values against, when not the model being encoded:
    ``teacher`` (a torch classifier, eval, of the same input) on function-matching views of ``images``
    (preprocessed NCHW float32), at learning rate ``lr`` (relative to each tensor's scale). `edge compress`
    trains a slimmed model's codes against the unslimmed model this way (quantization-aware fine-tuning)."""

    teacher: object
    images: np.ndarray
    lr: float = 3e-4
    about: str = "the model before slimming"


def encode_model(folded, spec: QuantSpec, calibration: np.ndarray | None = None,
                 layer_bits: dict[str, int] | None = None, *, input_shape: tuple[int, int, int] | None = None,
                 progress: bool = True, matching: Matching | None = None) -> tuple[list[FoldedLayer], dict]:
    """-> (the layers of ``folded`` with the weights and biases the file will hold, {layer name: weight encoding}).

    ``folded`` is `edge.models.fold.fold_model`'s result (not changed). Calibrated formats (``spec.calibrated``)
    equalize it (`edge.export.equalize`), then quantize its layers in forward order on ``calibration``
    (N, C, H, W float32, preprocessed), or on `CALIBRATION_IMAGES` synthetic 1/f images of
    ``input_shape`` (C, H, W) when it is None, with bias correction (`edge.export.calibrate`); with
    ``spec.train_epochs``, trained quantization then fine-tunes what is stored (`edge.export.finetune`):
    against ``folded`` itself on the calibration images, or as ``matching`` says.
    ``layer_bits`` gives named layers another bit width (mixed precision).
    """
    import copy

    from edge.models.fold import model_layers

    layer_bits = layer_bits or {}
    encoder = spec.handler.encoder(spec, layer_bits)
    if encoder is None:
        layers = model_layers(folded)
        return layers, spec.handler.encodings(layers, spec, layer_bits)
    from edge.export.calibrate import CALIBRATION_IMAGES, calibrate, synthetic_images
    from edge.export.equalize import equalize

    if calibration is None:
        if input_shape is None:
            raise ValueError(f"{spec.weights} --method {spec.method} calibrates on images: give calibration images "
                             "or input_shape")
        calibration = synthetic_images(CALIBRATION_IMAGES, input_shape[0], input_shape[1:])
    model = copy.deepcopy(folded)
    equalize(model, calibration, spec.bits, spec.per_channel, spec.fp16_below)
    if spec.train_epochs and matching is None:
        matching = Matching(copy.deepcopy(model), calibration, about="itself")
    encodings = calibrate(model, calibration, encoder, progress)
    if spec.train_epochs:
        from edge.export.finetune import train_quantized

        encodings = train_quantized(model, encodings, matching.teacher, matching.images, spec.train_epochs,
                                    lr=matching.lr, progress=progress)
    return model_layers(model), encodings
