"""Tell a model file's format from its first bytes, without running anything in it.

The one sniffer every reader asks before it picks a loader. It only looks at bytes: pickles are
recognised by walking their opcodes with `pickletools.genops` (a parser that builds no object
and imports nothing), never by unpickling, not even a prefix.

Formats: ``torch-zip`` (``torch.save``'s zip), ``torch-legacy`` (the old non-zip ``torch.save``,
which opens with a pickled magic number), ``pickle`` (any other pickle: the homework's 8-/16-bit
weights, or something hostile that the restricted unpickler will refuse), ``onnx`` (a protobuf
ModelProto: its first field is ``ir_version``, tag byte 0x08), ``unknown``.
"""

from __future__ import annotations

import errno
import itertools
import os
import pickletools
import stat

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MODEL_FORMATS = frozenset({"torch-zip", "torch-legacy", "pickle", "onnx"})
_HEAD = 64  # bytes enough to recognise every format above
_PICKLE_OPENERS = frozenset(b"\x80(}]c")  # PROTO; protocol 0/1 MARK, EMPTY_DICT, EMPTY_LIST, GLOBAL


def sniff(data: bytes) -> str:
    """The format of a file whose first bytes are ``data`` (see the module docstring)."""
    if data[:4] == b"PK\x03\x04":
        return "torch-zip"
    if _is_legacy_torch(data):
        return "torch-legacy"
    if data[:1] == b"\x08":
        return "onnx"
    if data[:1] and data[0] in _PICKLE_OPENERS:
        return "pickle"
    return "unknown"


def sniff_file(path: str | os.PathLike) -> str:
    """`sniff` of the file at ``path`` (OSError when it cannot be read, or is not a regular file: opening a
    pipe waits for a writer, so a FIFO given as ``--teacher`` stopped `edge distill` for ever)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a folder, device, pipe or socket)", str(path))
    with open(path, "rb") as f:
        return sniff(f.read(_HEAD))


def _is_legacy_torch(data: bytes) -> bool:
    """The file opens with a complete pickle of exactly the legacy magic number: PROTO, one
    integer opcode carrying the magic, STOP. Read as opcodes only."""
    if data[:1] != b"\x80":
        return False
    try:
        ops = [(op.name, arg) for op, arg, _ in itertools.islice(pickletools.genops(data), 3)]
    except Exception:  # noqa: BLE001 - genops raises ValueError (and others) on truncated or odd bytes
        return False
    return len(ops) == 3 and ops[0][0] == "PROTO" and ops[1][1] == TORCH_LEGACY_MAGIC and ops[2][0] == "STOP"


def is_onnx(path: str | os.PathLike) -> bool:
    """An ONNX file by its name or, under any other name, by its bytes (unreadable: by its name)."""
    if str(path).lower().endswith(".onnx"):
        return True
    try:
        return os.path.isfile(path) and sniff_file(path) == "onnx"
    except OSError:
        return False
