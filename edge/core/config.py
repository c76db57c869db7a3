"""The configs that travel with every model we write.

`StudentConfig` describes one member of the StudentNet family (per-stage widths, which
stages are followed by a 2x2 max-pool, input size, classes); `Preprocess` describes what
an image goes through before the network sees it. Both serialise to plain JSON so they
fit in a torch checkpoint (loadable with ``weights_only=True``) and in ONNX metadata.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

from edge.core.errors import EdgeError

FOOD11_CLASSES = (
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
)
HOMEWORK_WIDTHS = tuple(16 * m for m in (1, 2, 4, 8, 16, 16, 16, 16))
HOMEWORK_POOLS = (0, 1, 2, 3)
MAX_SIDE = 2048  # pixels: far above any model here; a card declaring more would make every batch huge
STD_RANGE = (1e-6, 1e6)  # normalisation that keeps (pixel - mean) / std a finite float32


class ConfigError(EdgeError, ValueError):
    """A config that cannot describe a working model."""


def _whole(name: str, value, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int: a number with a whole value in ``low..high`` (JSON's 32.0 too; never a
    string or a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} {int(value)} is outside {low}..{high if high is not None else ''}")
    return int(value)


def _numbers(name: str, values) -> tuple[float, ...]:
    """A list of finite numbers as floats (never a string, whose characters would pass as digits)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{name} must be a list of numbers, got {values!r}")
    values = tuple(values)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ConfigError(f"{name} must hold finite numbers, got {list(values)}")
    return tuple(float(v) for v in values)


class _JsonFields:
    """to_dict/from_dict for a flat frozen dataclass (tuples become JSON lists and back)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict):
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class StudentConfig(_JsonFields):
    """One StudentNet: stage 0 is a 3x3 conv, stages 1.. are depthwise-separable blocks.

    ``widths[i]`` is the output width of stage i; a stage listed in ``pools`` is followed
    by a 2x2 max-pool. Any positive widths are valid, so a slimmed model is the same family.
    """

    widths: tuple[int, ...] = HOMEWORK_WIDTHS
    pools: tuple[int, ...] = HOMEWORK_POOLS
    input_size: int = 256
    num_classes: int = 11
    in_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(_whole("widths", w) for w in _numbers("widths", self.widths)))
        object.__setattr__(self, "pools", tuple(sorted({_whole("pools", p, 0) for p in _numbers("pools", self.pools)})))
        if not self.widths:
            raise ConfigError("widths must be positive integers, got none")
        bad = [p for p in self.pools if not 0 <= p < len(self.widths)]
        if bad:
            raise ConfigError(f"pools {bad} name no stage (the model has stages 0..{len(self.widths) - 1})")
        object.__setattr__(self, "input_size", _whole("input_size", self.input_size, 1, MAX_SIDE))
        object.__setattr__(self, "num_classes", _whole("num_classes", self.num_classes))
        object.__setattr__(self, "in_channels", _whole("in_channels", self.in_channels))
        if self.input_size < 2 ** len(self.pools):
            raise ConfigError(f"input_size {self.input_size} is too small for {len(self.pools)} max-pools")

    @property
    def depth(self) -> int:
        return len(self.widths)

    def num_parameters(self) -> int:
        """Trainable parameters of the unfolded model (convs, BN affine, classifier)."""
        first = self.in_channels * self.widths[0] * 9 + self.widths[0] + 2 * self.widths[0]
        blocks = sum(c * 9 + c + 2 * c + c * d + d for c, d in zip(self.widths, self.widths[1:]))
        return first + blocks + self.widths[-1] * self.num_classes + self.num_classes

    def flops(self) -> int:
        """Multiply-accumulates x2 per image of the folded model (convs and classifier)."""
        size, total, channels = self.input_size, 0, self.in_channels
        for stage, width in enumerate(self.widths):
            if stage == 0:
                total += size * size * width * channels * 9
            else:
                total += size * size * (channels * 9 + channels * width)
            channels = width
            if stage in self.pools:
                size //= 2
        return 2 * (total + channels * self.num_classes)


@dataclass(frozen=True)
class Preprocess(_JsonFields):
    """Image -> float32 CHW tensor, applied identically by the torch and ONNX paths.

    Order: decode (optionally applying EXIF orientation), convert to ``color``, resize the
    shorter side to ``resize`` (if set), centre-crop ``crop`` (zero-padded when the image is
    smaller, as torchvision does), scale to 0..1, then subtract ``mean`` and divide by ``std``.
    The default is the homework's: CenterCrop(256) of the raw image, ToTensor, no normalisation.
    """

    crop: int = 256
    resize: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    color: str = "RGB"
    exif_transpose: bool = False

    def __post_init__(self):
        object.__setattr__(self, "crop", _whole("crop", self.crop, 1, MAX_SIDE))
        if self.resize is not None:
            object.__setattr__(self, "resize", _whole("resize", self.resize, 1, MAX_SIDE))
        object.__setattr__(self, "mean", _numbers("mean", self.mean))
        object.__setattr__(self, "std", _numbers("std", self.std))
        if self.color not in ("RGB", "L"):
            raise ConfigError(f"color must be RGB or L, got {self.color!r}")
        if len(self.mean) != len(self.color) or len(self.std) != len(self.color):
            raise ConfigError(f"mean/std need one value per {self.color} channel")
        if not all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in self.std) or max(map(abs, self.mean)) > STD_RANGE[1]:
            raise ConfigError(f"std must be in {STD_RANGE[0]:g}..{STD_RANGE[1]:g} and mean in "
                              f"-{STD_RANGE[1]:g}..{STD_RANGE[1]:g} (pixels are 0..1; others overflow float32), "
                              f"got mean {list(self.mean)}, std {list(self.std)}")
        if not isinstance(self.exif_transpose, bool):
            raise ConfigError(f"exif_transpose must be true or false, got {self.exif_transpose!r}")


@dataclass(frozen=True)
class ModelCard:
    """Everything a runtime needs besides the weights: architecture, inputs, labels."""

    config: StudentConfig = field(default_factory=StudentConfig)
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: tuple[str, ...] = FOOD11_CLASSES

    def __post_init__(self):
        if not isinstance(self.classes, (list, tuple)) or not all(isinstance(name, str) for name in self.classes):
            raise ConfigError(f"classes must be a list of names (strings), got {str(self.classes)[:80]}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.classes) != self.config.num_classes:
            raise ConfigError(f"{len(self.classes)} class names for {self.config.num_classes} outputs")

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "preprocess": self.preprocess.to_dict(),
                "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        return cls(StudentConfig.from_dict(data["config"]), Preprocess.from_dict(data["preprocess"]), data["classes"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        from edge.core.json_text import loads

        return cls.from_dict(loads(text))


def default_classes(num_classes: int) -> tuple[str, ...]:
    """Food-11 names for an 11-way model, ``class_<i>`` otherwise."""
    return FOOD11_CLASSES if num_classes == len(FOOD11_CLASSES) else tuple(f"class_{i}" for i in range(num_classes))
