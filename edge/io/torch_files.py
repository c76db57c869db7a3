"""Reading torch files without running code from them, and the weight checks every model reader runs.

`read_torch` is ``torch.load(weights_only=True)`` behind a checksum and a decompression-bomb check, with
torch's refusals turned into one line (`write_torch` writes what it checks); `check_weights` refuses non-finite, integer, complex or sparse
weights and negative BatchNorm variances, naming the tensor.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import re
import warnings
from pathlib import Path

import numpy as np

from edge.core.errors import CheckpointError


CHECKPOINT_KEY = "edge_checkpoint"


NET_KEY = "edge_net"  # edge.models.registry' model files of any architecture


MAX_EXPANSION = 4  # a torch zip may declare this many times its size (torch.save compresses nothing)


def first_non_finite(state) -> str | None:
    """The name of the first floating tensor in ``state`` (numpy arrays or torch tensors) holding a
    NaN or an infinity, else None."""
    for name, value in state.items():
        if hasattr(value, "isfinite"):  # a torch tensor (bfloat16 included), without importing torch
            if value.is_floating_point() and not bool(value.isfinite().all()):
                return name
        elif np.asarray(value).dtype.kind in "fc" and not np.isfinite(np.asarray(value)).all():
            return name
    return None


def check_weights(state, origin) -> None:
    """The weights sanity check every model reader runs at load, naming the tensor: a NaN or infinite
    weight makes a model answer one class for everything (or nan); a negative BatchNorm variance
    folds into sqrt of a negative number; integer, complex or sparse weights are not a float model's
    (torch would cast or drop part of them without a word)."""
    for name, value in state.items():
        problem = _weight_problem(str(name), value)
        if problem:
            raise CheckpointError(f"{origin}: tensor {name} {problem}")
    name = first_non_finite(state)
    if name is not None:
        raise CheckpointError(f"non-finite weights in {origin}: tensor {name}")


def _weight_problem(name: str, value) -> str | None:
    if hasattr(value, "layout"):  # a torch tensor, without importing torch
        if "strided" not in str(value.layout):
            return f"is a {value.layout} tensor, not dense float weights"
        is_complex, floating = value.is_complex(), value.is_floating_point()
    else:
        kind = np.asarray(value).dtype.kind
        is_complex, floating = kind == "c", kind == "f"
    if is_complex:
        return "holds complex numbers, not float weights"
    if not floating and not name.endswith("num_batches_tracked"):
        return f"holds {getattr(value, 'dtype', type(value).__name__)} values, not float weights"
    if floating and name.endswith("running_var") and bool((value < 0).any()):
        return "holds a negative BatchNorm variance (folding takes its square root)"
    return None


def model_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file; a device, pipe or folder would be read forever or not at all."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: cannot read (no such file)")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a weights file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a device or pipe): give a weights file")
    return path


def onnx_not_weights(path: Path) -> str:
    """What to say of an ONNX file given where a weights file belongs (named ``*.onnx`` or not)."""
    runs = "`edge predict`, `info`, `bench` and `convert --to onnx` read ONNX files"
    if path.suffix.lower() == ".onnx":
        return f"an ONNX model, not a weights file (a torch checkpoint, state dict or pickle), which is what this reads; {runs}"
    return f"this is an ONNX model (by its contents), not a weights file: name it *.onnx, as {runs}"


def read_torch(path: str | os.PathLike, contents: bytes | None = None):
    """``torch.load(weights_only=True)`` of ``path`` (or of its ``contents``, already read, e.g. sent
    by another process): never runs code from the file; a refusal or a damaged file is a
    `CheckpointError` with one line saying which."""
    import torch

    path = Path(path) if contents is not None else model_file(path)
    if _is_onnx(path, contents):
        raise CheckpointError(f"{path}: {onnx_not_weights(path)}")  # torch.load says "Unsupported operand 8"
    _check_archive(path, contents)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a foreign file
            warnings.simplefilter("ignore")
            source = io.BytesIO(contents) if contents is not None else path
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError/RuntimeError/EOFError/... on foreign or damaged files
        reason = _torch_reason(err)
        if "unsupported global" in reason.lower():
            raise CheckpointError(f"{path}: refused: the file holds more than weights and may try to run code "
                                  f"({reason})") from None
        raise CheckpointError(f"{path}: not a readable torch file ({reason})") from None


def write_torch(path: str | os.PathLike, payload) -> None:
    """``torch.save(payload)`` to ``path`` (atomically), sealed with edge's checksum as the zip comment
    (`edge.codec.checksum.seal_zip`), which `read_torch` verifies."""
    import torch

    from edge.codec.checksum import seal_zip
    from edge.core.files import atomic_write

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    sealed = seal_zip(buffer.getvalue())
    atomic_write(path, lambda f: f.write(sealed))


def _is_onnx(path: Path, contents: bytes | None) -> bool:
    from edge.core.formats import sniff, sniff_file

    try:
        return (sniff(contents[:64]) if contents is not None else sniff_file(path)) == "onnx"
    except OSError:
        return False  # torch.load names what is wrong with the file


def _check_archive(path: Path, contents: bytes | None) -> None:
    """A torch zip is checked before torch reads it: against the checksum edge wrote as its comment (any
    flipped bit, headers and padding included: `edge.codec.checksum.zip_damage`); then a zip whose entries
    expand far beyond the file (``torch.save`` stores them uncompressed) is a decompression bomb: torch
    would allocate what the zip directory declares, so it is refused from the directory alone, before
    anything is inflated; then every entry's CRC and local header is checked (torch.load checks neither:
    a flipped byte would load as a changed weight, a flipped header length as shifted ones)."""
    import zipfile

    from edge.codec.checksum import zip_damage

    with _bytes_of(path, contents) as data:
        if data[:4] != b"PK\x03\x04":
            return  # the legacy format, or no torch file: torch.load says which
        reason = zip_damage(data)
        if reason:
            raise CheckpointError(f"{path}: damaged torch file: {reason}; refused")
        try:
            with zipfile.ZipFile(io.BytesIO(data) if contents is not None else path) as archive:
                declared = sum(info.file_size for info in archive.infolist())
                if declared > MAX_EXPANSION * len(data) + (1 << 20):
                    raise CheckpointError(f"{path}: refused: its {len(data):,} bytes declare {declared:,} bytes of "
                                          f"tensors (a decompression bomb; torch.save stores tensors uncompressed)")
                damaged = archive.testzip()
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - zipfile raises BadZipFile, NotImplementedError, ... on odd bytes
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{path}: damaged torch file: its zip headers do not read ({reason})") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: damaged torch file: entry {damaged} fails its CRC check (a changed byte)")


@contextlib.contextmanager
def _bytes_of(path: Path, contents: bytes | None):
    """``contents``, or the file's bytes through a memory map (no copy)."""
    if contents is not None:
        yield contents
        return
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view


def _torch_reason(err: Exception) -> str:
    """torch's own reason in one line, without its advice to load with ``weights_only=False``
    (never do that with a file you did not make)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line or "unsupported global" in line.lower():
            reason = line.split("WeightsUnpickler error:")[-1].split(". Please use")[0].strip()
            return reason or (lines[i + 1] if i + 1 < len(lines) else type(err).__name__)
    advice = ("weights_only", "Weights only load failed", "trusted source", "Check the documentation")
    kept = [line for line in lines if not any(a in line for a in advice)]
    return kept[0] if kept else type(err).__name__
