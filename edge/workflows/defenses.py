"""Input-side (passive) defenses against adversarial images: the table of their names, the one
parser of ``NAME:VALUE,...`` lists, and applying them to a batch of pixel images.

Every defense maps float32 (N, C, H, W) images in [0, 1] (the model's input before any
normalisation) to the same shape and range, and runs before the model on clean and attacked
inputs alike:

- ``gaussian:SIGMA``  Gaussian blur, kernel ``2*ceil(3*SIGMA)+1``, reflected borders (the homework's smoothing)
- ``median:K``        K x K median filter (K odd), Pillow's MedianFilter
- ``jpeg:QUALITY``    JPEG re-encoding at QUALITY (1-95) with Pillow, 4:2:0 chroma
- ``bits:N``          colour depth reduced to N bits per channel (feature squeezing)
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from edge.core.errors import EdgeError


class DefenseError(EdgeError, ValueError):
    """A --defense entry that is not in the table or has a bad value."""


def _gaussian(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, [radius] * 4, mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _per_image(images: torch.Tensor, change: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    """Apply a Pillow operation to each image as 8-bit pixels (exact: defenses see 8-bit images)."""
    pixels = np.rint(images.detach().permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    out = [np.asarray(change(Image.fromarray(p.squeeze(-1) if p.shape[-1] == 1 else p))).reshape(p.shape)
           for p in pixels]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255)


def _median(images: torch.Tensor, size: int) -> torch.Tensor:
    return _per_image(images, lambda image: image.filter(ImageFilter.MedianFilter(size)))


def _jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    def recode(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer)

    return _per_image(images, recode)


def _bits(images: torch.Tensor, bits: int) -> torch.Tensor:
    levels = (1 << bits) - 1
    return torch.round(images * levels) / levels


@dataclass(frozen=True)
class _Kind:
    parse: Callable[[str], float | int]
    valid: Callable[[float | int], bool]
    requirement: str
    example: str
    apply: Callable[[torch.Tensor, float | int], torch.Tensor]


DEFENSES: dict[str, _Kind] = {
    "gaussian": _Kind(float, lambda s: 0 < s <= 20, "a sigma in pixels, 0 < SIGMA <= 20", "gaussian:1.5", _gaussian),
    "median": _Kind(int, lambda k: k >= 3 and k % 2 == 1 and k <= 15, "an odd window size 3..15", "median:3", _median),
    "jpeg": _Kind(int, lambda q: 1 <= q <= 95, "a quality 1..95", "jpeg:75", _jpeg),
    "bits": _Kind(int, lambda n: 1 <= n <= 7, "a bit depth 1..7", "bits:4", _bits),
}


@dataclass(frozen=True)
class Defense:
    """One parsed table entry; ``name`` is its canonical text (``gaussian:1.5``), the report's key."""

    kind: str
    value: float | int

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return DEFENSES[self.kind].apply(images, self.value)


def parse_defense(text: str) -> Defense:
    kind, _, value = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in DEFENSES:
        raise DefenseError(f"unknown defense {text.strip()!r}: choose from "
                           + ", ".join(f"{k} (e.g. {v.example})" for k, v in DEFENSES.items()))
    entry = DEFENSES[kind]
    try:
        number = entry.parse(value.strip())
    except ValueError:
        number = None
    if number is None or not entry.valid(number):
        raise DefenseError(f"defense {text.strip()!r}: {kind} takes {entry.requirement}, e.g. {entry.example}")
    return Defense(kind, number)


def parse_defenses(text: str | None) -> tuple[Defense, ...]:
    """``gaussian:1.5,median:3`` -> the defenses in order, duplicates dropped; "" or None -> none (the way to
    ask for none). Commas naming no defense (``,,``) are refused: a slip, not a way to say none."""
    if not text:
        return ()
    parsed = [parse_defense(part) for part in text.split(",") if part.strip()]
    if not parsed:
        raise DefenseError(f"--defense {text!r} names no defense: give one or more, e.g. "
                           + ", ".join(v.example for v in DEFENSES.values()) + " (or '' for none)")
    return tuple(dict.fromkeys(parsed))
