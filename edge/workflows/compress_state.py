"""Reading back an `edge compress` record (``state.json``) for ``--resume``: every field checked.

The record names the files a search made (each point's ONNX file, each round's model file) and the
numbers it chooses by, and ``--resume`` trusts it: a damaged or edited record must be refused with
one line, never followed (a file name that climbs out of the work folder, a device, a point whose
bytes are text). `read_state` owns that: a regular file of bounded size, JSON, the fields the search
reads with their types, file names that are plain names inside the work folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from edge.core.config import ConfigError

MAX_STATE_BYTES = 16 << 20  # a search records a few hundred points at most: well under 1 MB

# field -> kind, for the entries the search and the report read (optional ones are checked when present)
_POINT = {"stage": str, "keep": float, "format": str, "onnx": "file", "bytes": int, "val_agreement": float}
_POINT_OPTIONAL = {"val_accuracy": float, "val_kl": float, "test_accuracy": float, "round": int}
_ROUND = {"round": int, "keep": float, "model": "file", "seconds": float, "epoch_seconds": list}
_ROUND_OPTIONAL = {"export_seconds": float, "done": bool}


_KIND_NAMES = {"file": "a file name in the work folder", str: "text", float: "a finite number",
               int: "a whole number >= 0", list: "a list", bool: "true or false"}


def read_state(path: Path) -> dict:
    """The record at ``path``, checked (`ConfigError` naming the file and the field otherwise)."""
    if not path.is_file():
        raise ConfigError(f"{path}: nothing to resume (no such file, or not a regular file): run without "
                          f"--resume first")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise ConfigError(f"{path}: refused: over {MAX_STATE_BYTES:,} bytes, not a compress record")
    try:
        saved = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a resumable compress record ({err})") from None
    problem = _problem(saved)
    if problem:
        raise ConfigError(f"{path}: not a resumable compress record ({problem})")
    return saved


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a record holds")


def _problem(saved) -> str | None:
    if not isinstance(saved, dict):
        return f"a JSON {type(saved).__name__}, not an object"
    for key, kind in (("settings", dict), ("about", dict), ("points", list), ("rounds", list)):
        if not isinstance(saved.get(key), kind):
            return f"{key!r} is not a JSON {'object' if kind is dict else 'list'}"
    if not _fits(saved.get("seconds", 0.0), float) or not _fits(saved.get("path", []), list):
        return "'seconds' or 'path' has the wrong type"
    if not all(_fits(keep, float) for keep in saved.get("path", [])):
        return "'path' holds something other than keep fractions"
    for key, required, optional in (("points", _POINT, _POINT_OPTIONAL), ("rounds", _ROUND, _ROUND_OPTIONAL)):
        for i, entry in enumerate(saved[key]):
            if not isinstance(entry, dict):
                return f"{key}[{i}] is not an object"
            for field, kind in {**required, **{k: v for k, v in optional.items() if k in entry}}.items():
                if not _fits(entry.get(field), kind):
                    return f"{key}[{i}].{field} is {entry.get(field)!r}: expected {_KIND_NAMES[kind]}"
    return None


def _fits(value, kind) -> bool:
    if kind == "file":  # a plain name: no folder part, no '..', no hidden or empty name
        return isinstance(value, str) and value == Path(value).name and not value.startswith(".") and value != ""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return isinstance(value, kind)
