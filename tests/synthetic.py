"""Seeded synthetic stand-ins for the real data in ../shared, so the core tests run on any clone:
Food-11-like JPEG photos with a labels CSV, and StudentNet weights that look trained (BatchNorm
statistics that are not the identity). The conftest fixtures build on these; tests import the
helpers directly when they need another size or seed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edge.core.config import StudentConfig
from edge.models.student import StudentNet, state_to_numpy

# Photo sizes like Food-11's (mostly 512x384, some portrait, some odd; the rest kept small to stay
# fast), two of them smaller than the homework's 256 crop (zero-padded by CenterCrop)
PHOTO_SIZES = ((512, 384), (240, 320), (300, 300), (257, 263), (200, 150), (96, 300))


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth colour regions plus grain, so JPEG behaves as on real photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((max(1, height // 32) + 1, max(1, width // 32) + 1, 3))
    smooth = np.kron(coarse, np.ones((32, 32, 1)))[:height, :width]
    pixels = smooth * 200 + rng.random((height, width, 3)) * 55
    return Image.fromarray(pixels.astype(np.uint8))


def write_photos(folder: Path, names: list[str], seed: int = 0, quality: int = 90) -> list[Path]:
    """JPEG photos named ``names`` in ``folder`` (created), sizes cycling through PHOTO_SIZES."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        photo(width, height, seed * 100_003 + i).save(folder / name, quality=quality)
        paths.append(folder / name)
    return paths


def write_food11(root: Path, testing: int = 40, per_class: int = 2, classes: int = 11, seed: int = 0) -> Path:
    """A Food-11 layout: ``validation/<class>_<n>.jpg``, ``testing/NNNN.jpg`` and
    ``reference_labels.csv`` (``Id,label,votes``, seeded labels) for the testing photos."""
    write_photos(root / "validation", [f"{c}_{n}.jpg" for c in range(classes) for n in range(per_class)], seed)
    write_photos(root / "testing", [f"{i:04d}.jpg" for i in range(testing)], seed + 1)
    labels = np.random.default_rng(seed).integers(0, classes, testing)
    with open(root / "reference_labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Id", "label", "votes"])
        writer.writerows([f"{i:04d}", int(label), 3] for i, label in enumerate(labels))
    return root


def write_grey_classes(root: Path, count: int, classes: int = 10, size: int = 28) -> Path:
    """``count`` grey ``size``-px PNGs in class subfolders ``0``.. (a Fashion-MNIST-like folder)."""
    for i in range(count):
        (root / str(i % classes)).mkdir(parents=True, exist_ok=True)
        photo(size, size, seed=i).convert("L").save(root / str(i % classes) / f"{i}.png")
    return root


def trained_like(config: StudentConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded StudentNet weights whose BatchNorm statistics are not the identity (like a trained
    model's), so folding, surgery and reconstruction have something to get wrong."""
    torch.manual_seed(seed)
    model = StudentNet(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.05, 0.5)
    return state_to_numpy(model)


def save_sealed(model, path) -> None:
    """``onnx.save`` of an edited edge ONNX file with its ``edge.crc32`` checksum recomputed, as a hostile
    user could: the file reaches the checks behind the checksum (a checksum catches damage, not intent)."""
    from edge.codec.checksum import seal

    Path(path).write_bytes(seal(model.SerializeToString()))


def shown_tick_labels(axis) -> list:
    """The tick labels an axis draws: those of ticks inside its view (others exist but are not shown)."""
    low, high = sorted(axis.get_view_interval())
    return [label for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if low <= loc <= high and label.get_visible() and label.get_text()]


def text_outside_figure(fig) -> list[str]:
    """The texts of ``fig`` (titles, axis labels, shown tick labels) that reach outside it, and neighbouring
    tick labels of one axis that overlap, after drawing: what a reader would see clipped or run together."""
    fig.canvas.draw()
    renderer, frame = fig.canvas.get_renderer(), fig.bbox
    texts = [t for t in fig.texts if t.get_text()]
    problems = []
    for ax in fig.axes:
        texts += [t for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
        if not ax.axison:  # axis("off"): no labels or ticks are drawn
            continue
        texts += [t for t in (ax.xaxis.label, ax.yaxis.label) if t.get_text()]
        for axis in (ax.xaxis, ax.yaxis):
            ticks = shown_tick_labels(axis)
            texts += ticks
            problems += [f"overlap: {a.get_text()!r} {b.get_text()!r}" for a, b in zip(ticks, ticks[1:])
                         if a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer))]
    for text in texts:
        box = text.get_window_extent(renderer)
        if box.x0 < frame.x0 - 1 or box.x1 > frame.x1 + 1 or box.y0 < frame.y0 - 1 or box.y1 > frame.y1 + 1:
            problems.append(f"outside: {text.get_text()!r}")
    return problems
