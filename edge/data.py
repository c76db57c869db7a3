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

from edge.errors import EdgeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_FOOD11_LABELLED = re.compile(r"([0-9]+)_([0-9]+)")
_NUMBER = re.compile(r"[0-9]+")


class DatasetError(EdgeError, ValueError):
    """A data folder or label file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Sample:
    id: str
    path: Path
    label: int | None = None

    @property
    def sort_key(self) -> tuple:
        return tuple((0, int(p), "") if _NUMBER.fullmatch(p) else (1, 0, p) for p in re.split(r"[_/]", self.id))


def is_image(path: Path) -> bool:
    """An image by its name (any case of suffix, not hidden) that is a file or a broken link (so
    that it is reported as unreadable rather than silently left out); never a folder or a pipe."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _parse_id(text: str) -> str:
    """``0042`` -> ``42`` (ASCII digits only: ``int`` would also take other scripts' digits);
    other names are kept as they are, without surrounding spaces."""
    text = text.strip() or text
    return str(int(text)) if _NUMBER.fullmatch(text) else text


def _flat_samples(folder: Path) -> list[Sample]:
    samples = []
    for path in folder.iterdir():
        if not is_image(path):
            continue
        match = _FOOD11_LABELLED.fullmatch(path.stem)
        label = int(match.group(1)) if match else None
        samples.append(Sample(_parse_id(path.stem) if not match else path.stem, path, label))
    return samples


def _class_index(name: str, classes: tuple[str, ...]) -> int | None:
    if name in classes:
        return classes.index(name)
    return int(name) if _NUMBER.fullmatch(name) and int(name) < len(classes) else None


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
        raise DatasetError(f"{folder}: no such folder{_contents_hint(folder.parent, '; ')}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    try:
        samples = _flat_samples(folder) or _tree_samples(folder, classes)
    except PermissionError as err:
        raise DatasetError(f"{err.filename}: permission denied") from None
    if not samples:
        raise DatasetError(f"{folder}: no images found (files ending in {', '.join(sorted(IMAGE_SUFFIXES))}, "
                           f"any case){_contents_hint(folder, ': ')}")
    _check_unique(samples)
    return sorted(samples, key=lambda s: s.sort_key)


def _contents_hint(folder: Path, lead: str) -> str:
    """What ``folder`` holds, to point at the right path (e.g. ``testing/``); "" if unreadable."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return ""
    more = f", ... ({len(names)} entries)" if len(names) > 5 else ""
    return f"{lead}{folder} " + (f"holds {', '.join(names[:5])}{more}" if names else "is empty")


def _check_unique(samples: list[Sample]) -> None:
    seen: dict[str, Path] = {}
    clashes = []
    for sample in samples:
        if sample.id in seen:
            clashes.append(f"{seen[sample.id].name} and {sample.path.name} (id {sample.id})")
        seen.setdefault(sample.id, sample.path)
    if clashes:
        raise DatasetError("duplicate image ids: " + "; ".join(clashes[:10]))


def read_labels(path: str | Path, num_classes: int | None = None) -> dict[str, int]:
    """``Id,label[,...]`` CSV (a UTF-8 byte-order mark allowed) -> {id: label}; ids normalised as
    image names are. Duplicate ids, and labels outside ``0..num_classes-1`` when given, are errors."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: cannot read labels ({getattr(err, 'strerror', None) or err})") from None
    if not rows or not {"Id", "label"} <= set(rows[0]):
        raise DatasetError(f"{path}: expected a CSV with columns Id,label")
    labels: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        key, label = _parse_id(row["Id"] or ""), _parse_label(row["label"], num_classes)
        if label is None or key in labels:
            problem = f"label {row['label']!r} is not a class index" if label is None else f"id {key} again"
            raise DatasetError(f"{path}, line {line}: {problem}"
                               + (f" (the model has classes 0..{num_classes - 1})" if num_classes else ""))
        labels[key] = label
    return labels


def _parse_label(text: str | None, num_classes: int | None) -> int | None:
    text = (text or "").strip()
    if not _NUMBER.fullmatch(text) or (num_classes is not None and int(text) >= num_classes):
        return None
    return int(text)
