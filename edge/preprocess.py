"""Image file -> float32 CHW array, exactly as the model's `Preprocess` says. numpy + Pillow only.

For homework models this reproduces ``CenterCrop(256)`` + ``ToTensor()`` of torchvision
pixel for pixel: no resize, no EXIF rotation, crop offsets rounded as torchvision rounds them,
zero padding when an image is smaller than the crop.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edge.config import Preprocess


class ImageError(ValueError):
    """An image file that cannot be decoded."""


class TruncatedImageWarning(UserWarning):
    """An image whose data ends early; it was decoded as far as it goes."""


def _center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


def _pad_to(image: Image.Image, crop: int) -> Image.Image:
    """torchvision's CenterCrop padding: zeros, split left/right with the extra pixel right."""
    width, height = image.size
    if width >= crop and height >= crop:
        return image
    pad_w, pad_h = max(crop - width, 0), max(crop - height, 0)
    canvas = Image.new(image.mode, (width + pad_w, height + pad_h))
    canvas.paste(image, (pad_w // 2, pad_h // 2))
    return canvas


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image.resize(new, Image.BILINEAR)


def _decode(source, spec: Preprocess) -> Image.Image:
    with Image.open(source) as image:
        image.load()
        if spec.exif_transpose:
            image = ImageOps.exif_transpose(image)
        return image.convert(spec.color)


def open_image(path, spec: Preprocess) -> Image.Image:
    """Decode ``path`` in ``spec.color``. A truncated JPEG is decoded as far as its data goes
    (the missing rows come out grey, as libjpeg fills them), with a warning naming the file."""
    try:
        try:
            return _decode(path, spec)
        except OSError as err:
            if "truncated" not in str(err):
                raise
            data = Path(path).read_bytes()
            if not data.startswith(b"\xff\xd8"):
                raise
            image = _decode(io.BytesIO(data + b"\xff\xd9"), spec)  # close the stream: libjpeg stops cleanly
            warnings.warn(f"{path}: truncated JPEG, decoded as far as the data goes", TruncatedImageWarning,
                          stacklevel=2)
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def to_array(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """A decoded image -> normalised float32 array of shape (channels, crop, crop)."""
    if spec.resize:
        image = _resize_shorter(image, spec.resize)
    image = _pad_to(image, spec.crop)
    image = image.crop(_center_crop_box(*image.size, spec.crop))
    pixels = np.asarray(image, dtype=np.float32).reshape(spec.crop, spec.crop, -1) / 255.0
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def load_image(path, spec: Preprocess) -> np.ndarray:
    """Decode and preprocess one image file."""
    return to_array(open_image(path, spec), spec)
