"""Find the images of a dataset folder, their ids and (when known) their labels. No torch.

Layouts:
- a Food-11 split: ``testing/NNNN.jpg`` (id = the number), ``training/`` or ``validation/``
  with ``<class>_<n>.jpg`` (label = class, id = the file's stem);
- a class-subfolder tree: ``root/<class name or index>/<image>`` (label from the folder).
Ids must be unique; labels can also come from a ``Id,label`` CSV.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import EdgeError
from edge.core.files import IMAGE_SUFFIXES, check_input, is_image

_FOOD11_LABELLED = re.compile(r"([0-9]+)_([0-9]+)")
_NUMBER = re.compile(r"[0-9]+")
MAX_LABELS_BYTES = 64 * 1024 * 1024  # a label per image: far above any dataset edge scores


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


def _parse_id(text: str) -> str:
    """``0042`` -> ``42`` (ASCII digits only: ``int`` would also take other scripts' digits);
    other names are kept as they are, without surrounding spaces."""
    text = text.strip() or text
    return str(int(text)) if _NUMBER.fullmatch(text) else text


def _flat_samples(folder: Path, classes: tuple[str, ...]) -> list[Sample]:
    """Images directly in ``folder``; ``<class>_<n>`` names give labels unless one of them names a
    class the model does not have (then the names are not labels, and none is used)."""
    samples = []
    for path in folder.iterdir():
        if not is_image(path):
            continue
        match = _FOOD11_LABELLED.fullmatch(path.stem)
        label = int(match.group(1)) if match else None
        samples.append(Sample(_parse_id(path.stem) if not match else path.stem, path, label))
    if classes and any(s.label is not None and s.label >= len(classes) for s in samples):
        samples = [Sample(s.id, s.path) for s in samples]
    return samples


def _class_index(name: str, classes: tuple[str, ...]) -> int | None:
    if name in classes:
        return classes.index(name)
    return int(name) if _NUMBER.fullmatch(name) and int(name) < len(classes) else None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _tree_samples(folder: Path, classes: tuple[str, ...], strict_classes: bool) -> list[Sample]:
    samples = []
    subdirs = _subfolders(folder)
    known = {d.name: _class_index(d.name, classes) for d in subdirs}
    if any(v is None for v in known.values()):  # folder names are not the model's classes
        known = {d.name: None if strict_classes else i for i, d in enumerate(subdirs)}
    for directory in subdirs:
        for path in directory.iterdir():
            if is_image(path):
                samples.append(Sample(f"{directory.name}/{path.stem}", path, known[directory.name]))
    return samples


def _check_layout(folder: Path, flat: bool) -> None:
    """Images where edge would not look are an error, not silently left out: in subfolders of a
    folder that holds images itself, or one level deeper than class subfolders."""
    for sub in _subfolders(folder):
        deeper = [sub] if flat else _subfolders(sub)
        for place in deeper:
            if any(is_image(p) for p in place.iterdir()):
                layout = "holds images itself and in" if flat else "has images nested in"
                raise DatasetError(f"{folder}: {layout} {place.relative_to(folder)}/; edge reads DIR/<image> or "
                                   f"DIR/<class>/<image>: give one of those layouts")


def _check_names(samples: list[Sample]) -> None:
    """File names that are not valid UTF-8 cannot be written to the CSV: said before any work."""
    bad = []
    for sample in samples:
        try:
            sample.id.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(sample.path.name))
    if bad:
        raise DatasetError(f"{samples[0].path.parent}: {len(bad)} image name(s) are not valid UTF-8 (e.g. "
                           f"{bad[0]!r}) and cannot go into a CSV: rename them")


def list_samples(folder: str | Path, classes: tuple[str, ...] = (), strict_classes: bool = False) -> list[Sample]:
    """Every image of ``folder`` in id order; raises `DatasetError` on an unusable folder.

    ``classes``: the model's class names. Class subfolders named otherwise are labelled in sorted
    order (training from scratch), or, with ``strict_classes`` (scoring a model), not at all."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: no such folder{_contents_hint(folder.parent, '; ')}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    try:
        flat = _flat_samples(folder, classes)
        _check_layout(folder, flat=bool(flat))
        samples = flat or _tree_samples(folder, classes, strict_classes)
    except PermissionError as err:
        raise DatasetError(f"{err.filename}: permission denied") from None
    if not samples:
        raise DatasetError(f"{folder}: no images found (files ending in {', '.join(sorted(IMAGE_SUFFIXES))}, "
                           f"any case){_contents_hint(folder, ': ')}")
    _check_names(samples)
    _check_unique(samples)
    return sorted(samples, key=lambda s: s.sort_key)


def _contents_hint(folder: Path, lead: str) -> str:
    """What ``folder`` holds, to point at the right path (e.g. ``testing/``); "" if unreadable."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return ""
    names = [name for name in entries if not name.startswith(".")]
    more = f", ... ({len(names)} entries)" if len(names) > 5 else ""
    hidden = f"holds only hidden entries ({len(entries)}, names starting with '.', which edge skips)"
    return f"{lead}{folder} " + (f"holds {', '.join(names[:5])}{more}" if names else hidden if entries else "is empty")


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
        check_input(path, "labels CSV", MAX_LABELS_BYTES)
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
