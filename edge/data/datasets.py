"""Training data: images decoded once into uint8 tensors, batched with the homework's augmentation.

Sources, named by a string: an image folder in a layout `edge.data.folders` reads (Food-11 ``training/``,
``validation/``, unlabelled ``testing/``, or class subfolders), or ``fashion-mnist:train`` /
``fashion-mnist:test`` (the IDX files); either may be sliced in id order with ``@START:STOP``
(``.../testing@:300`` is the first 300 images by id).

An evaluation set holds exactly the pixels the deployed model sees (`edge.data.preprocess`: decode,
resize, centre crop). A training set holds a larger square canvas around each image, from which
`augment` takes the homework's ``RandomCrop(crop, pad_if_needed, padding_mode='symmetric')``,
``RandomHorizontalFlip`` and ``RandomRotation(15)`` (nearest, zero fill) for a whole batch at once.
Decoding (the slow part of a CPU epoch) runs once in a thread pool; ``cache_dir`` keeps the
decoded tensors on disk for the next run. Batch order and augmentation are drawn from
``(seed, epoch, batch)`` alone, so an epoch is the same for any number of loader workers and
after a resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge.codec.checksum import CHECKSUM_KEY, seal_zip, zip_damage
from edge.core.config import FOOD11_CLASSES, ConfigError, Preprocess
from edge.data.folders import DatasetError, list_samples, read_labels
from edge.core.files import atomic_write

FASHION_MNIST_DIR = Path(os.environ.get("EDGE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_FILES = {"train": "train-{}-ubyte.gz", "test": "t10k-{}-ubyte.gz"}
_SLICE = re.compile(r"^(.*)@(-?\d*):(-?\d*)$")
CACHE_VERSION = 1
MAX_ANGLE = 15.0


@dataclass
class ImageSet:
    """Decoded images of one split. ``boxes`` (training sets only): where each image lies in its
    canvas, as (top, left, height, width); labels are -1 where unknown."""

    pixels: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    ids: list[str]
    classes: tuple[str, ...] | None
    preprocess: Preprocess
    boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).all())


@dataclass(frozen=True)
class Augment:
    """The homework's training augmentation for ``crop``-pixel inputs (``padding``: torchvision
    RandomCrop's symmetric padding on each side before cropping, 0 in the homework)."""

    crop: int
    padding: int = 0
    max_angle: float = MAX_ANGLE
    flip: bool = True

    def __post_init__(self):
        if self.padding > self.crop:  # --padding 100000 asked for a 120 GB canvas per image
            raise ConfigError(f"--padding {self.padding} is more than the {self.crop}-pixel input: a random crop "
                              f"could hold no image at all (use at most {self.crop})")

    @property
    def canvas(self) -> int:
        """Side of the stored square around each image: room for the random crop's travel."""
        return self.crop + 2 * max(self.padding, self.crop // 4)


# ---------------------------------------------------------------- sources

def parse_source(text: str) -> tuple[str, slice]:
    """``'path@10:20'`` -> (``'path'``, slice(10, 20)); a name that exists as a path is never split."""
    match = _SLICE.match(text)
    if not match or Path(text).exists():
        return text, slice(None)
    to_int = lambda s: int(s) if s else None  # noqa: E731
    return match.group(1), slice(to_int(match.group(2)), to_int(match.group(3)))


IDX_EXPANSION = 32  # a gzipped IDX file may expand this many times its size (Fashion-MNIST's: under 8)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): the format of MNIST and Fashion-MNIST. A gzip stream expanding beyond
    `IDX_EXPANSION` times the file (a decompression bomb) is refused before it is all inflated."""
    try:
        raw = path.read_bytes()
        data = _gunzip(raw, IDX_EXPANSION * len(raw) + (1 << 20)) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: cannot read IDX file ({err})") from None
    if data is None:
        raise DatasetError(f"{path}: refused: its gzip stream expands beyond {IDX_EXPANSION} times the file "
                           "(a decompression bomb)")
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != math.prod(shape):
        raise DatasetError(f"{path}: holds {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def _gunzip(raw: bytes, limit: int) -> bytes | None:
    """The gzip stream ``raw`` inflated, or None when it holds more than ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=31)
    data = inflater.decompress(raw, limit + 1)
    if len(data) > limit:
        return None
    if not inflater.eof:
        raise EOFError("the gzip stream is truncated")
    return data


def _fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR):
    if split not in _FASHION_FILES:
        raise DatasetError(f"fashion-mnist:{split}: the splits are {', '.join(_FASHION_FILES)}")
    images_path, labels_path = (root / _FASHION_FILES[split].format(kind) for kind in ("images-idx3", "labels-idx1"))
    if not images_path.exists():
        raise DatasetError(f"{images_path}: Fashion-MNIST not found (apt-get install -y dataset-fashion-mnist, "
                           f"or set EDGE_FASHION_MNIST to the folder of its IDX files)")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if len(images) != len(labels):
        raise DatasetError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64), [images_path, labels_path]


def _folder_classes(folder: Path, samples, hint: tuple[str, ...]) -> tuple[str, ...] | None:
    """Class names as `edge.data.folders` numbered them: the hint's when it covers every subfolder (or for
    Food-11's flat ``<class>_<n>`` names), else the subfolders in sorted order; None if unlabelled."""
    if not any("/" in s.id for s in samples):
        return (hint or FOOD11_CLASSES) if any(s.label is not None for s in samples) else None
    folders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if hint and all(f in hint or (f.isdigit() and int(f) < len(hint)) for f in folders):
        return hint
    return tuple(folders)


def _csv_classes(truth: dict[str, int], hint: tuple[str, ...]) -> tuple[str, ...]:
    """Classes of images labelled by a CSV: the hint's, Food-11's when the labels fit, else numbered."""
    top = max(truth.values(), default=0)
    if hint:
        return hint
    return FOOD11_CLASSES if top < len(FOOD11_CLASSES) else tuple(str(i) for i in range(top + 1))


# ---------------------------------------------------------------- decoding

def _canvas(pixels: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """HWC pixels -> a CHW square of ``size``: the image centred (centre-cropped where larger),
    symmetric padding around it; and the box the image occupies."""
    pads, cuts, box = [], [], []
    for extent in pixels.shape[:2]:
        if extent >= size:
            start = (extent - size) // 2
            cuts.append(slice(start, start + size))
            pads.append((0, 0))
            box += [0, size]
        else:
            before = (size - extent) // 2
            cuts.append(slice(None))
            pads.append((before, size - extent - before))
            box += [before, extent]
    square = np.pad(pixels[cuts[0], cuts[1]], (*pads, (0, 0)), mode="symmetric")
    return np.ascontiguousarray(square.transpose(2, 0, 1)), (box[0], box[2], box[1], box[3])


def _prepare(pixels: np.ndarray, spec: Preprocess, augment: Augment | None):
    from edge.data.preprocess import center_crop

    if augment is None:
        return np.ascontiguousarray(center_crop(pixels, spec.crop).transpose(2, 0, 1)), None
    return _canvas(pixels, augment.canvas)


def _decode_files(samples, spec: Preprocess, augment: Augment | None, workers: int, progress: bool = True):
    from tqdm import tqdm

    from edge.data.preprocess import read_image

    def work(sample):
        return _prepare(read_image(sample.path, spec)[0], spec, augment)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(work, samples), total=len(samples), desc="decode", unit="img", leave=False,
                         disable=not progress))


def _decode_arrays(images: np.ndarray, spec: Preprocess, augment: Augment | None):
    if spec.resize:
        raise DatasetError("fashion-mnist images are 28x28: choose --input-size (a larger one is zero-padded "
                           "as torchvision's CenterCrop pads); resizing is for image folders")
    channels = len(spec.color)
    return [_prepare(np.repeat(image[:, :, None], channels, axis=2), spec, augment) for image in images]


def _stack(prepared, labels, ids, classes, spec, augment) -> ImageSet:
    pixels = torch.from_numpy(np.stack([p for p, _ in prepared])) if prepared else torch.zeros(0, len(spec.color),
                                                                                                 spec.crop, spec.crop,
                                                                                                 dtype=torch.uint8)
    boxes = torch.tensor([b for _, b in prepared], dtype=torch.int32) if augment else None
    return ImageSet(pixels, torch.as_tensor(labels, dtype=torch.int64), list(ids), classes, spec, boxes)


# ---------------------------------------------------------------- loading with a cache

def decode_image_set(source: str, spec: Preprocess, augment: Augment | None = None, *, workers: int = 4,
                     cache_dir: str | os.PathLike | None = None, labels_csv: str | os.PathLike | None = None,
                     class_hint: tuple[str, ...] = (), progress: bool = True) -> ImageSet:
    """Decode a data source (``FOLDER[@START:STOP]``, ``fashion-mnist:SPLIT``) into a uint8 `ImageSet` for
    ``spec`` (an evaluation set), or for training with ``augment``; cached in ``cache_dir`` when given."""
    name, part = parse_source(source)
    if name.startswith("fashion-mnist"):
        split = name.partition(":")[2] or "train"
        images, labels, files = _fashion_mnist(split)
        ids = [str(i) for i in range(len(images))][part]
        images, labels, classes, samples = images[part], labels[part], FASHION_MNIST_CLASSES, None
    else:
        samples = list_samples(name, class_hint)[part]
        files, ids = [s.path for s in samples], [s.id for s in samples]
        classes = _folder_classes(Path(name), samples, class_hint)
        labels = [-1 if s.label is None else s.label for s in samples]
    if not len(ids):
        raise DatasetError(f"{source}: the slice selects no images")
    if labels_csv:
        truth = read_labels(labels_csv, len(class_hint) if class_hint else None)
        labels = [truth.get(i, -1) for i in ids]
        classes = classes or _csv_classes(truth, class_hint)
    key = _cache_key(source, files, spec, augment, labels)
    cached = _read_cache(cache_dir, name, key)
    if cached is not None:
        return ImageSet(cached["pixels"], torch.as_tensor(labels, dtype=torch.int64), ids, classes, spec,
                        cached["boxes"] if augment else None)
    prepared = _decode_arrays(images, spec, augment) if samples is None else _decode_files(samples, spec, augment,
                                                                                            workers, progress)
    data = _stack(prepared, labels, ids, classes, spec, augment)
    _write_cache(cache_dir, name, key, data)
    return data


def _cache_key(source, files, spec: Preprocess, augment: Augment | None, labels) -> str:
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps([CACHE_VERSION, source, stats, spec.to_dict(), augment and augment.canvas, len(labels)])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _cache_path(cache_dir, name: str, key: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/"))[-60:]
    return Path(cache_dir) / f"{stem}-{key}.pt"


def _read_cache(cache_dir, name: str, key: str) -> dict | None:
    if not cache_dir:
        return None
    path = _cache_path(cache_dir, name, key)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        if not data.endswith(f"{CHECKSUM_KEY}=".encode() + data[-8:]) or zip_damage(data):
            return None  # not sealed as `_write_cache` seals it, or a changed byte: rebuilt
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return None


def _write_cache(cache_dir, name: str, key: str, data: ImageSet) -> None:
    if not cache_dir:
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"pixels": data.pixels, "boxes": data.boxes}, buffer)
    sealed = seal_zip(buffer.getvalue())  # a flipped pixel would otherwise train silently
    atomic_write(_cache_path(cache_dir, name, key), lambda f: f.write(sealed))


# ---------------------------------------------------------------- batches

def seed_for(*parts: int) -> int:
    """A 63-bit seed drawn from the integers ``parts`` (seed, epoch, batch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _offsets(start, extent, crop: int, padding: int, canvas: int, u: torch.Tensor) -> torch.Tensor:
    """RandomCrop's offsets along one axis, in canvas coordinates, drawn from uniforms ``u``."""
    start, extent = start - padding, extent + 2 * padding
    low = torch.where(extent >= crop, start, start - (crop - extent))
    high = torch.where(extent >= crop, start + extent - crop, start)
    low, high = low.clamp(0, canvas - crop), high.clamp(0, canvas - crop)
    return low + (u * (high - low + 1).float()).long().clamp(max=(high - low))


def augment_batch(pixels: torch.Tensor, boxes: torch.Tensor, aug: Augment, generator: torch.Generator | None,
                  draws: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop, horizontal flip and rotation of a uint8 batch of canvases -> float 0..255.
    The batch's random numbers are ``draws`` (n x 4 uniforms) when given, else drawn from ``generator``."""
    n, size, crop = len(pixels), pixels.shape[-1], aug.crop
    u = torch.rand(n, 4, generator=generator) if draws is None else draws
    top = _offsets(boxes[:, 0], boxes[:, 2], crop, aug.padding, size, u[:, 0])
    left = _offsets(boxes[:, 1], boxes[:, 3], crop, aug.padding, size, u[:, 1])
    crops = torch.stack([pixels[i, :, t:t + crop, x:x + crop]
                         for i, (t, x) in enumerate(zip(top.tolist(), left.tolist()))])
    angle = torch.deg2rad((u[:, 2] * 2 - 1) * aug.max_angle)
    mirror = torch.where(u[:, 3] < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    grid = (torch.arange(crop, dtype=torch.float32) + 0.5) * (2.0 / crop) - 1.0  # pixel centres, align_corners=False
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    source_x = (cos * x - sin * y) * mirror[:, None, None]
    source_y = sin * x + cos * y
    return torch.nn.functional.grid_sample(crops.float(), torch.stack([source_x, source_y], -1), mode="nearest",
                                           padding_mode="zeros", align_corners=False)


def normalize(images: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """uint8 (or float 0..255) pixels -> the model's input, as `edge.data.preprocess.to_array` computes it."""
    x = images.float() / 255.0
    if any(spec.mean) or any(s != 1 for s in spec.std):
        x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    return x


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``b`` of epoch ``epoch``: (inputs, labels, indices), shuffled and augmented from
    ``(seed, epoch)`` and ``(seed, epoch, b)`` only, so any worker can build any batch.

    ``share`` (a function of a batch's length, `edge.train.distributed.Group.share`): the part of every
    batch this process trains on, when several do (None: all); its images are augmented exactly
    as in the whole batch."""

    def __init__(self, data: ImageSet, batch_size: int, augment: Augment | None = None, seed: int = 0,
                 epoch: int = 0, shuffle: bool = False, share=None):
        self.data, self.batch_size, self.augment, self.seed, self.epoch = data, batch_size, augment, seed, epoch
        self.share = share
        n = len(data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch))) if shuffle \
            else torch.arange(n)
        # training drops a ragged last batch (a batch of one breaks BatchNorm on 1x1 maps)
        count = n // batch_size if shuffle and n > batch_size else math.ceil(n / batch_size)
        self.batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        whole = self.batches[b]
        mine = self.share(len(whole)) if self.share else slice(None)
        index = whole[mine]
        pixels = self.data.pixels[index]
        if self.augment is not None:
            generator = torch.Generator().manual_seed(seed_for(self.seed, self.epoch, b))
            draws = torch.rand(len(whole), 4, generator=generator)[mine]
            pixels = augment_batch(pixels, self.data.boxes[index], self.augment, None, draws)
        return normalize(pixels, self.data.preprocess), self.data.labels[index], index


def batches(data: ImageSet, batch_size: int, augment: Augment | None = None, seed: int = 0, epoch: int = 0,
            workers: int = 0, share=None):
    """An iterable of one epoch's batches (shuffled and augmented when ``augment`` is given;
    this process's ``share`` of each, see `EpochBatches`)."""
    dataset = EpochBatches(data, batch_size, augment, seed, epoch, shuffle=augment is not None, share=share)
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       persistent_workers=False)
