"""Image file -> float32 CHW array, exactly as the model's `Preprocess` says. numpy + Pillow only.

For homework models this reproduces ``CenterCrop(256)`` + ``ToTensor()`` of torchvision
pixel for pixel: no resize, no EXIF rotation, crop offsets rounded as torchvision rounds them,
zero padding when an image is smaller than the crop, ``x / 255`` in float32.

Speed: a plain RGB JPEG is decoded by libjpeg-turbo through simplejpeg (when installed), which
gives the same pixels as Pillow's decode (the same library and settings: accurate integer DCT,
fancy upsampling; a test checks every real photo) about 1.6x faster; anything else (PNG, CMYK,
a damaged or truncated JPEG, EXIF rotation, resizing) goes through Pillow. Both release the
GIL, so threads decode in parallel. The crop is a view, scaled to floats a colour plane at a time.

Memory: an image of up to Pillow's pixel limit (89 M pixels: a 9,400 x 9,400 PNG of one colour is a
200 kB file) costs up to 360 MB per copy, so each intermediate (EXIF rotation, 16-bit -> 8-bit, the
colour conversion) is freed as soon as the next exists, the 16-bit scaling runs a band of rows at a
time, an image already in the wanted colours is not copied, and images over `LARGE_PIXELS` decode one
at a time (the threads of `edge predict` would otherwise hold several at once).
"""

from __future__ import annotations

import ctypes
import io
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edge.core.config import Preprocess
from edge.core.errors import EdgeError
from edge.core.files import InputError, check_input

try:
    import simplejpeg
except ImportError:  # an optional speed-up: Pillow decodes the same pixels
    simplejpeg = None

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
_TURBO_COLORSPACES = ("YCbCr", "Gray")
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MAX_FILE_BYTES = 256 * 1024 * 1024  # far above any photo; a larger "image" is refused unread
LARGE_PIXELS = 24_000_000  # above a 24 MP photo (~100 MB a copy), decoding takes `_ONE_LARGE_IMAGE`
_ONE_LARGE_IMAGE = threading.Lock()
_BAND_ROWS = 256  # rows of a 16/32-bit image scaled to 8 bits at once

# Pillow only warns on images between its pixel limit and twice it; edge refuses them itself
# (`_check_pixels`, an ImageError naming the file), so Pillow's raw warning is not shown.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(EdgeError, ValueError):
    """An image file that cannot be decoded."""


class TruncatedImageWarning(UserWarning):
    """An image whose data ends early; it was decoded as far as it goes."""


def read_file(path) -> bytes:
    """The file's bytes; `ImageError` naming the file when it cannot be read, is not a regular file,
    is empty or is larger than `MAX_FILE_BYTES` (refused before reading, so a huge or sparse file, a
    device or a pipe costs no memory and no wait)."""
    try:
        check_input(path, "image", MAX_FILE_BYTES)
        data = Path(path).read_bytes()
    except InputError as err:
        raise ImageError(str(err)) from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror or err})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def _turbo_eligible(data: bytes, spec: Preprocess) -> bool:
    return simplejpeg is not None and data.startswith(JPEG_START) and spec.color == "RGB" \
        and not spec.exif_transpose and not spec.resize


def _decode_turbo(data: bytes) -> np.ndarray | None:
    """A clean YCbCr or grey JPEG -> HWC uint8 RGB via libjpeg-turbo; None when Pillow must decide
    (CMYK and other colour spaces Pillow converts its own way, huge images, damaged or truncated
    data: ``strict`` turns libjpeg's warnings into errors)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        too_big = Image.MAX_IMAGE_PIXELS and height * width > Image.MAX_IMAGE_PIXELS
        if colorspace not in _TURBO_COLORSPACES or too_big:
            return None
        with _decoding(height * width):
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except ValueError:
        return None


@contextmanager
def _decoding(pixels: int):
    """Around the decoding of an image of ``pixels``: one large image at a time (small ones freely), and
    the memory it freed handed back to the system after it (`_give_back_freed_memory`)."""
    if pixels <= LARGE_PIXELS:
        yield
        return
    with _ONE_LARGE_IMAGE:
        try:
            yield
        finally:
            _give_back_freed_memory()


def _give_back_freed_memory() -> None:
    """glibc keeps the 16 MB blocks Pillow freed in the decoding thread's heap, so each thread that decoded
    a large image held its size on (6 such 30 kB PNGs took `edge predict` from 0.7 to 1.2 GB); elsewhere
    (no ``malloc_trim``) nothing to do."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None
    if trim is not None:
        trim(0)


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image.resize(new, Image.BILINEAR)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey images -> 8-bit by their top byte; Pillow's own ``convert``
    clips every value above 255 to white. A band of rows at a time: the whole image as 32-bit integers
    was 4 copies of it at once (1.1 GB for a 200 kB 16-bit PNG)."""
    if image.mode not in _WIDE_MODES:
        return image
    eight_bit = image.mode == "I" and image.getextrema()[1] <= 255  # an 8-bit image stored wide
    shift, top_value = (0, 255) if eight_bit else (8, 65535)
    out = np.empty((image.height, image.width), np.uint8)
    for top, band in _bands(image):
        out[top:top + len(band)] = np.clip(band, 0, top_value).astype(np.uint32) >> shift
    return Image.fromarray(out, "L")


def _bands(image: Image.Image):
    """(first row, that band of rows as an array) over ``image``, `_BAND_ROWS` at a time."""
    for top in range(0, image.height, _BAND_ROWS):
        yield top, np.asarray(image.crop((0, top, image.width, min(image.height, top + _BAND_ROWS))))


def _pixels(image: Image.Image) -> np.ndarray:
    """``image``'s pixels as an HWC uint8 array; a large image band by band (``np.asarray`` holds it twice
    more as bytes on the way)."""
    if image.width * image.height <= LARGE_PIXELS:
        return np.asarray(image).reshape(image.height, image.width, -1)
    out = np.empty((image.height, image.width, len(image.getbands())), np.uint8)
    for top, band in _bands(image):
        out[top:top + len(band)] = band.reshape(len(band), image.width, -1)
    return out


def _upright_in_colour(image: Image.Image, spec: Preprocess) -> Image.Image:
    """The loaded ``image`` turned upright by its EXIF tag (when ``spec`` says so), in 8 bits and in
    ``spec.color``; each image it replaces is closed (its pixels freed) as soon as the next exists."""
    steps = [lambda im: ImageOps.exif_transpose(im, in_place=True) or im] if spec.exif_transpose else []
    steps += [_to_8bit, lambda im: im if im.mode == spec.color else im.convert(spec.color)]
    for step in steps:
        result = step(image)
        if result is not image:
            image.close()
            image = result
    return image


def _check_pixels(image: Image.Image) -> None:
    """Refuse an image over Pillow's pixel limit before decoding it (Pillow itself refuses only
    above twice the limit)."""
    pixels = image.width * image.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{image.width}x{image.height} = {pixels:,} pixels, over the limit of "
                                           f"{Image.MAX_IMAGE_PIXELS:,} (a possible decompression bomb)")


def _decode_pillow(source, spec: Preprocess) -> np.ndarray:
    with Image.open(source) as opened:
        _check_pixels(opened)
        with _decoding(opened.width * opened.height):
            opened.load()
            image = _upright_in_colour(opened, spec)
            if spec.resize:
                image = _resize_shorter(image, spec.resize)
            pixels = _pixels(image)
            image.close()  # freed before `_decoding` hands the memory back
            return pixels


def _decode(path, data: bytes, spec: Preprocess) -> tuple[np.ndarray, str | None]:
    pixels = _decode_turbo(data) if _turbo_eligible(data, spec) else None
    if pixels is not None:
        return pixels, None
    try:
        return _decode_pillow(io.BytesIO(data), spec), None
    except OSError as err:
        if "truncated" not in str(err) or not data.startswith(JPEG_START):
            raise
    # the data ends early: close the stream so libjpeg stops cleanly (it fills the missing rows grey)
    return _decode_pillow(io.BytesIO(data + JPEG_END), spec), f"{path}: truncated JPEG, decoded as far as the data goes"


def read_image(path, spec: Preprocess) -> tuple[np.ndarray, str | None]:
    """Decode ``path`` to HWC uint8 pixels in ``spec.color`` (resized if ``spec.resize``), and a
    note naming the file when it was truncated. Anything that goes wrong is an `ImageError`."""
    data = read_file(path)
    try:
        return _decode(path, data, spec)
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: refused: {err}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (no image format recognised in its {len(data):,} bytes)") from None
    except Exception as err:  # noqa: BLE001 - untrusted bytes make decoders raise anything; all mean "unreadable"
        raise ImageError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None


def center_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """torchvision's ``CenterCrop`` on an HWC array: zero padding split with the extra pixel
    right/bottom when the image is smaller, offsets ``int(round((size - crop) / 2))``."""
    height, width = pixels.shape[:2]
    if height < crop or width < crop:
        pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
        pixels = np.pad(pixels, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return pixels[top:top + crop, left:left + crop]


def to_array(pixels: np.ndarray, spec: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """Decoded HWC uint8 pixels -> centre-cropped float32 (channels, crop, crop), ``ToTensor``'s
    ``x / 255`` then ``(x - mean) / std`` in float32, written into ``out`` when given."""
    crop = center_crop(pixels, spec.crop)
    out = np.empty((crop.shape[2],) + crop.shape[:2], np.float32) if out is None else out
    for channel, plane in enumerate(out):  # a plane at a time: 1.5x faster than one strided transpose
        np.divide(crop[:, :, channel], np.float32(255), out=plane, dtype=np.float32)
    if any(spec.mean) or any(s != 1 for s in spec.std):
        out -= np.asarray(spec.mean, np.float32)[:, None, None]
        out /= np.asarray(spec.std, np.float32)[:, None, None]
    return out


def load_image(path, spec: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """Decode and preprocess one image file (into ``out`` when given); a truncated file gives a
    `TruncatedImageWarning`."""
    pixels, note = read_image(path, spec)
    if note:
        warnings.warn(note, TruncatedImageWarning, stacklevel=2)
    return to_array(pixels, spec, out)


def first_images(folder, card, count: int, warn=lambda line: None) -> np.ndarray:
    """Up to ``count`` images of ``folder`` (any layout `edge.data.folders.list_samples` reads), in id order,
    preprocessed for ``card`` (a `ModelCard`); an unreadable one is skipped (``warn`` gets its line), and a
    folder with none readable is a `DatasetError`."""
    from edge.data.folders import DatasetError, list_samples

    arrays = []
    for sample in list_samples(folder, card.classes):
        try:
            arrays.append(load_image(sample.path, card.preprocess))
        except ImageError as err:
            warn(f"warning: skipped {err}")
            continue
        if len(arrays) == count:
            break
    if not arrays:
        raise DatasetError(f"{folder}: no image could be decoded")
    return np.stack(arrays)
