"""Find the images of a dataset folder, their ids and (when known) their labels. No torch.

Layouts:
- a Food-11 split: ``testing/NNNN.jpg`` (id = the number), ``training/`` or ``validation/``
  with ``<class>_<n>.jpg`` (label = class, id = the file's stem);
- a class-subfolder tree: ``root/<class name or index>/<image>`` (label from the folder).
Ids must be unique; labels can also come from a ``Id,label`` CSV.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_FOOD11_LABELLED = re.compile(r"^(\d+)_(\d+)$")


class DatasetError(ValueError):
    """A data folder or label file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Sample:
    id: str
    path: Path
    label: int | None = None

    @property
    def sort_key(self) -> tuple:
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[_/]", self.id))


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _parse_id(stem: str) -> str:
    return str(int(stem)) if stem.isdigit() else stem


def _flat_samples(folder: Path) -> list[Sample]:
    samples = []
    for path in folder.iterdir():
        if not is_image(path):
            continue
        match = _FOOD11_LABELLED.match(path.stem)
        label = int(match.group(1)) if match else None
        samples.append(Sample(_parse_id(path.stem) if not match else path.stem, path, label))
    return samples


def _class_index(name: str, classes: tuple[str, ...]) -> int | None:
    if name in classes:
        return classes.index(name)
    return int(name) if name.isdigit() and int(name) < len(classes) else None


def _tree_samples(folder: Path, classes: tuple[str, ...]) -> list[Sample]:
    samples = []
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    known = {d.name: _class_index(d.name, classes) for d in subdirs}
    if any(v is None for v in known.values()):  # folder names are not the model's classes: sorted order
        known = {d.name: i for i, d in enumerate(subdirs)}
    for directory in subdirs:
        for path in directory.iterdir():
            if is_image(path):
                samples.append(Sample(f"{directory.name}/{path.stem}", path, known[directory.name]))
    return samples


def list_samples(folder: str | Path, classes: tuple[str, ...] = ()) -> list[Sample]:
    """Every image of ``folder`` in id order; raises `DatasetError` on an unusable folder."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    try:
        samples = _flat_samples(folder) or _tree_samples(folder, classes)
    except PermissionError as err:
        raise DatasetError(f"{err.filename}: permission denied") from None
    if not samples:
        hint = " (it holds a testing/ folder: pass that)" if (folder / "testing").is_dir() else ""
        raise DatasetError(f"{folder}: no images found{hint}")
    _check_unique(samples)
    return sorted(samples, key=lambda s: s.sort_key)


def _check_unique(samples: list[Sample]) -> None:
    seen: dict[str, Path] = {}
    clashes = []
    for sample in samples:
        if sample.id in seen:
            clashes.append(f"{seen[sample.id].name} and {sample.path.name} (id {sample.id})")
        seen.setdefault(sample.id, sample.path)
    if clashes:
        raise DatasetError("duplicate image ids: " + "; ".join(clashes[:10]))


def read_labels(path: str | Path) -> dict[str, int]:
    """``Id,label[,...]`` CSV -> {id: label}; ids normalised as image names are."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise DatasetError(f"{path}: cannot read labels ({err.strerror})") from None
    if not rows or not {"Id", "label"} <= set(rows[0]):
        raise DatasetError(f"{path}: expected a CSV with columns Id,label")
    try:
        return {_parse_id(r["Id"].strip()): int(r["label"]) for r in rows}
    except (ValueError, AttributeError) as err:
        raise DatasetError(f"{path}: bad row ({err})") from None
