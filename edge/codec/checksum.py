"""The checksum every ONNX file edge writes carries (``edge.crc32``): a CRC-32 of the whole file with its own
entry blanked, so any single-bit flip is refused when the file is opened. Works on bytes alone: no onnx,
no torch.

Torch zips edge writes (checkpoints, model files) carry the same CRC-32 as their zip comment,
``edge.crc32=XXXXXXXX``, over every byte before it (`seal_zip`, `zip_damage`): the entries' own CRCs
cover only the tensors, not the headers that say where they are, nor the padding between them. The
homework pickles edge writes carry it after the pickle's end (`seal_pickle`, `pickle_damage`), where
``pickle.load`` (the homework's own decoder) never reads.
"""

from __future__ import annotations

import mmap
import os
import re
import zlib

from edge.core.errors import MetadataError


CHECKSUM_KEY = "edge.crc32"


UNSET = "00000000"


# the checksum entry as protobuf serializes it (a StringStringEntryProto: key, field 1; value, field 2)
_ENTRY = b"\x0a" + bytes([len(CHECKSUM_KEY)]) + CHECKSUM_KEY.encode() + b"\x12" + bytes([len(UNSET)])


_SEAL = re.compile(re.escape(_ENTRY) + b"(.{8})", re.DOTALL)


def seal(data: bytes) -> bytes:
    """The serialized ONNX file ``data`` with its `CHECKSUM_KEY` entry set to the CRC-32 of the file
    as it is with the entry at ``00000000`` (unchanged when it holds no such entry)."""
    found = list(_SEAL.finditer(data))
    if len(found) != 1:
        return data
    start, end = found[0].span(1)
    blank = data[:start] + UNSET.encode() + data[end:]
    return data[:start] + f"{zlib.crc32(blank):08x}".encode() + data[end:]


def check_seal(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at ``path`` carries our checksum (True: it matched; `MetadataError` naming
    the file when it does not). Reads the file's bytes only: no onnx, no torch."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            found = [m.span(1) for m in _SEAL.finditer(view)]
            if not found:
                return False
            if len(found) > 1:
                raise MetadataError(f"{path}: damaged: it holds {len(found)} {CHECKSUM_KEY!r} entries")
            (start, end), size = found[0], len(view)
            crc = zlib.crc32(view[:start])
            crc = zlib.crc32(view[end:], zlib.crc32(UNSET.encode(), crc))
            recorded = bytes(view[start:end])
    if recorded != f"{crc:08x}".encode():
        raise MetadataError(f"{path}: damaged: its bytes do not match their {CHECKSUM_KEY} checksum (changed since "
                            f"edge wrote it, {size:,} B); refused")
    return True


_ZIP_END = b"PK\x05\x06"  # the end-of-central-directory record: 22 bytes, then the comment
_ZIP_SEAL = (CHECKSUM_KEY + "=").encode()
_ZIP_SEAL_SIZE = len(_ZIP_SEAL) + len(UNSET)


def seal_zip(data: bytes) -> bytes:
    """``torch.save``'s zip (no comment) with our checksum as its comment; other bytes are returned as they are."""
    if len(data) < 22 or data[-22:-18] != _ZIP_END or data[-2:] != b"\0\0":
        return data
    head = data[:-2] + _ZIP_SEAL_SIZE.to_bytes(2, "little")
    return head + _ZIP_SEAL + f"{zlib.crc32(head):08x}".encode()


def zip_damage(data) -> str | None:
    """Why the zip ``data`` (bytes or a memory map) fails its `seal_zip` checksum; None when it matches or the
    zip carries none (older files, other tools'). A comment one bit away from ours counts as ours."""
    end = data.rfind(_ZIP_END, max(0, len(data) - 22 - 0xFFFF))
    if end < 0:
        return None
    comment, declared = bytes(data[end + 22:]), int.from_bytes(data[end + 20:end + 22], "little")
    if not _looks_sealed(comment):
        return None
    if declared != len(comment) or len(comment) != _ZIP_SEAL_SIZE:
        return f"its {CHECKSUM_KEY} comment is cut or padded"
    if comment[-len(UNSET):] != f"{zlib.crc32(data[:end + 22]):08x}".encode() or comment[:len(_ZIP_SEAL)] != _ZIP_SEAL:
        return f"its bytes do not match their {CHECKSUM_KEY} checksum (changed since edge wrote it)"
    return None


def seal_pickle(data: bytes) -> bytes:
    """A pickle with our checksum after its end."""
    return data + _ZIP_SEAL + f"{zlib.crc32(data):08x}".encode()


def pickle_damage(data: bytes, end: int) -> str | None:
    """Why ``data``, a pickle that ends at ``end``, is not the pickle and `seal_pickle` checksum edge wrote;
    None when it is, or when it carries no checksum and nothing follows its end (older files, other tools').
    A file that ends like a seal is checked by it whatever ``end`` says: a flipped bit in a protocol-4
    frame length made the unpickler read the seal as part of the pickle, and the file pass as unsealed."""
    body, tail = data[:-_ZIP_SEAL_SIZE], data[-_ZIP_SEAL_SIZE:]
    if len(data) > _ZIP_SEAL_SIZE and _looks_sealed(tail):
        if tail != _ZIP_SEAL + f"{zlib.crc32(body):08x}".encode():
            return f"its bytes do not match their {CHECKSUM_KEY} checksum (changed since edge wrote it)"
        return None if end == len(body) else f"the pickle ends at byte {end:,}, not where its checksum begins"
    trailer = data[end:]
    return f"{len(trailer):,} bytes follow the pickle's end" if trailer else None


def _looks_sealed(comment: bytes) -> bool:
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(comment[:len(_ZIP_SEAL)], _ZIP_SEAL))
    return len(comment) >= len(_ZIP_SEAL) and flipped <= 1
