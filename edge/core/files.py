"""Writing files safely: the one output-path guard every command runs before any work, and
atomic writes, so a failure or Ctrl-C never leaves a half-written or clobbered file.

`check_output` refuses, up front, an output that would destroy something the user has: one of
the command's own inputs (the same file under any name, or an image inside an input folder), a
folder, a device, a pipe or socket, a symbolic link (refused rather than written through, so a
link can never redirect an output onto another file), an existing run unless resuming, a model
file about to be replaced by something that is not a model (a CSV, JSON, a report), or anything in
the shipped models folder (`SHIPPED_MODELS`: edge never writes there, whatever the command).
`check_output_dir` does the same for commands whose output is a folder. `check_input` refuses,
before opening, an input that is not a regular file or is larger than any file of its kind.
`shipped_damage` says when a shipped model is not the bytes it shipped as (they predate edge's checksums).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import IO, Callable, Iterable

from edge.core.errors import EdgeError
from edge.core.formats import MODEL_FORMATS, sniff_file

SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"  # the models edge ships (a clone's models/)
# Their bytes as shipped: written before edge sealed its files, so a flipped bit shows only here.
SHIPPED_SHA256 = {"food11_student_compressed.onnx": "dd29dd6a32c05f7ce064f951b7a7c403794dea1e20858edae7531c57e888457d",
                  "food11_student_uint8.onnx": "bccd48e8dd3af77256e93846bca74e9d65e2bb91d7ac56e131b2dac4686d02cc"}


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_damage(path: Path) -> str | None:
    """Why ``path``, a model of `SHIPPED_MODELS` (links resolved), is not the bytes it shipped as; None when it is,
    or when it is no shipped model."""
    real = real_path(path)
    expected = SHIPPED_SHA256.get(real.name)
    if expected is None or real.parent != real_path(SHIPPED_MODELS):
        return None
    changed = not_as_shipped(real, expected)
    return changed and f"{changed}: damaged or replaced by hand; restore it (git checkout -- models/{real.name})"


def not_as_shipped(path: Path, expected: str) -> str | None:
    """How ``path`` differs from the shipped bytes whose SHA-256 is ``expected``; None when it does not."""
    digest = file_sha256(path)
    return None if digest == expected else f"not the file edge shipped (sha256 {digest[:16]}..., shipped {expected[:16]}...)"


class OutputError(EdgeError, ValueError):
    """An output path edge refuses to write (any existing file is left as it was)."""


class InputError(EdgeError, ValueError):
    """An input file edge refuses to read: not a regular file, or larger than any of its kind."""


def check_input(path: str | os.PathLike, what: str, limit: int) -> int:
    """The size of the input file at ``path``, checked before it is opened: a folder, device, pipe or
    socket (which could block or never end) and a file over ``limit`` bytes are an `InputError`
    naming it; OSError (missing, unreadable) passes through to the caller's own message."""
    info = Path(path).stat()
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: cannot read {what}: not a regular file (a folder, device, pipe or socket)")
    if info.st_size > limit:
        raise InputError(f"{path}: refused: {info.st_size:,} bytes, more than any {what} edge reads ({limit:,})")
    return info.st_size


OVERWRITE_HINT = "pass --overwrite to replace it, or choose another path"  # every command's one rule


def check_output(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = True,
                 writes_model: bool = False, model_format: str | None = None, what: str = "output",
                 hint: str = OVERWRITE_HINT) -> Path:
    """Fail before any work when writing ``path`` could destroy something; return it as a Path.

    ``inputs``: the command's input files and folders and its other outputs: none may be ``path``, and
    no existing file inside an input folder may be either (it is one of the inputs).
    ``overwrite=False``: an existing file is refused (without --overwrite, or a run's file without --resume).
    ``writes_model=False``: an existing model file (ONNX, torch, binary pickle) is refused.
    ``model_format``: the format of the model written (`edge.core.formats`: ``onnx``); an existing file of any
    other format is refused (a checkpoint or a text file is never replaced by an ONNX file).
    ``what`` names the output in messages; ``hint`` says what to do when it already exists.
    """
    path = Path(path)
    _check_not_special(path, what)
    _check_not_shipped(path, what)
    _check_not_an_input(path, inputs, what)
    if path.exists():
        if not writes_model and _is_model_file(path):
            raise OutputError(f"{path}: {what} would replace a model file; edge never overwrites a model with "
                              f"a {what}: choose another name")
        if model_format and _format_of(path) != model_format:
            raise OutputError(f"{path}: {what} would replace a file that is not {model_format.upper()} (its bytes "
                              f"read {_format_of(path)}); edge replaces only a file of the same format: choose "
                              f"another name")
        if not overwrite:
            raise OutputError(f"{path}: {what} exists and edge does not replace it: {hint}")
    _check_folder(path, what)
    return path


def check_output_dir(path: str | os.PathLike, *, inputs: Iterable = (), what: str = "output folder") -> Path:
    """An output folder: a folder or a new name (never a file, device or link), not an input, that
    edge may create (missing parents included) or write in."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path}: {what} is a symbolic link; give the real folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {what} exists and is not a folder")
    _check_not_shipped(path, what)
    _check_not_an_input(path, inputs, what)
    if not path.exists():
        existing = next(p for p in path.absolute().parents if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot create {what}: {existing} is not a folder edge may write in")
    elif not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {what}: no permission to write in it")
    return path


def _check_not_special(path: Path, what: str) -> None:
    if path.is_symlink():
        raise OutputError(f"{path}: {what} is a symbolic link; edge does not write through links "
                          f"(give the real path)")
    if path.is_dir():
        raise OutputError(f"{path}: {what} is a folder, not a file to write")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise OutputError(f"{path}: {what} is not a regular file (a device, pipe or socket); edge writes only "
                          f"regular files")


def _check_not_shipped(path: Path, what: str) -> None:
    """Nothing is written in `SHIPPED_MODELS` or over a file of it: links resolved, and a hard link to a
    shipped file is that file."""
    shipped = real_path(SHIPPED_MODELS)
    inside = real_path(path).is_relative_to(shipped)
    if inside or (path.is_file() and any(_same_file(path, f) for f in shipped.glob("*"))):
        raise OutputError(f"{path}: {what} would be written {'in' if inside else 'over a file of'} the models edge "
                          f"ships ({shipped}); edge never changes them: choose a path outside that folder")


def real_path(path: str | os.PathLike) -> Path:
    """``path`` absolute, its symbolic links followed as far as they lead: `Path.resolve` raised RuntimeError
    (a traceback) on a link that leads to itself, which this leaves as it is."""
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_an_input(path: Path, inputs: Iterable, what: str) -> None:
    for source in inputs:
        if source is None or str(source) == "":
            continue
        source = Path(source)
        try:
            same = source.exists() and os.path.samefile(source, path)
        except OSError:
            same = False
        if same or real_path(source) == real_path(path):
            raise OutputError(f"{path}: {what} is the same file as {source}, which this command also reads or "
                              f"writes: choose another name")
        if path.exists() and source.is_dir() and real_path(path).is_relative_to(real_path(source)) and is_image(path):
            raise OutputError(f"{path}: {what} would replace an image of the input folder {source}: choose a "
                              f"name outside it")




def _check_folder(path: Path, what: str) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: cannot write {what}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write {what}: no permission to create files in {folder}")


def _is_model_file(path: Path) -> bool:
    return _format_of(path) in MODEL_FORMATS


def _format_of(path: Path) -> str:
    try:
        return sniff_file(path)
    except OSError:
        return "unreadable"


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write through ``write(f)`` into a temporary file beside ``path``, then rename it into place.
    A link, folder or device at ``path``, a path in `SHIPPED_MODELS`, and a failed write are `OutputError`
    (any existing file is left as it was)."""
    path = Path(path)
    _check_not_special(path, "output")
    _check_not_shipped(path, "output")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a folder that went away: the old file is left as it was
        raise OutputError(f"{path}: cannot write ({err.strerror or err}); nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def is_image(path: Path) -> bool:
    """An image by its name (any case of suffix, not hidden) that is not a folder: a file, or a broken
    link, device or pipe so named, which is then reported as unreadable (`edge.data.preprocess.read_file`
    refuses it unopened) rather than silently left out of the predictions."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    return not path.is_dir()
