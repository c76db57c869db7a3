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

from edge.errors import EdgeError

FOOD11_CLASSES = (
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
)
HOMEWORK_WIDTHS = tuple(16 * m for m in (1, 2, 4, 8, 16, 16, 16, 16))
HOMEWORK_POOLS = (0, 1, 2, 3)
# The largest input side edge builds a model for (and resizes a photo to): a file declaring more would
# make export, calibration and every prediction allocate gigabytes per image (Food-11 photos are 512 px).
MAX_INPUT_SIZE = 1024


class ConfigError(EdgeError, ValueError):
    """A config that cannot describe a working model."""


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
        for name in ("input_size", "num_classes", "in_channels"):
            _check_count(name, getattr(self, name))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "pools", tuple(sorted({int(p) for p in self.pools})))
        if self.input_size > MAX_INPUT_SIZE:
            raise ConfigError(f"input_size {self.input_size} is over {MAX_INPUT_SIZE} pixels, the largest edge "
                              f"runs a model on")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"widths must be positive integers, got {self.widths}")
        bad = [p for p in self.pools if not 0 <= p < len(self.widths)]
        if bad:
            raise ConfigError(f"pools {bad} name no stage (the model has stages 0..{len(self.widths) - 1})")
        if self.input_size < 2 ** len(self.pools):
            raise ConfigError(f"input_size {self.input_size} is too small for {len(self.pools)} max-pools (at least "
                              f"{2 ** len(self.pools)} px)")

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
        _check_count("crop", self.crop)
        if self.resize is not None:
            _check_count("resize", self.resize)
        if max(self.crop, self.resize or 0) > MAX_INPUT_SIZE:
            raise ConfigError(f"crop/resize {max(self.crop, self.resize or 0)} is over {MAX_INPUT_SIZE} pixels, the "
                              f"largest edge runs a model on")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std, default=1.0) <= 0:
            raise ConfigError(f"mean {list(self.mean)} / std {list(self.std)}: finite numbers, std positive "
                              f"(the image is divided by it)")
        if self.color not in ("RGB", "L"):
            raise ConfigError(f"color must be RGB or L, got {self.color!r}")
        if len(self.mean) != len(self.color) or len(self.std) != len(self.color):
            raise ConfigError(f"mean/std need one value per {self.color} channel")


@dataclass(frozen=True)
class ModelCard:
    """Everything a runtime needs besides the weights: architecture, inputs, labels."""

    config: StudentConfig = field(default_factory=StudentConfig)
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: tuple[str, ...] = FOOD11_CLASSES

    def __post_init__(self):
        if isinstance(self.classes, (str, bytes)) or not all(isinstance(c, str) for c in self.classes):
            raise ConfigError("classes must be a list of class names (text)")
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
        return cls.from_dict(json.loads(text))


def _check_count(name: str, value) -> None:
    """A size or count in a config: a positive integer (JSON from a file may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def default_classes(num_classes: int) -> tuple[str, ...]:
    """Food-11 names for an 11-way model, ``class_<i>`` otherwise."""
    return FOOD11_CLASSES if num_classes == len(FOOD11_CLASSES) else tuple(f"class_{i}" for i in range(num_classes))
