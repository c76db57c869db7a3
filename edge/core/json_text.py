"""Reading JSON that came from a file or a model's metadata: its nesting is bounded, so a crafted
``[[[[...`` (a few hundred kB) is a ValueError naming the depth like any other malformed JSON, never
Python's RecursionError (a traceback). And sealing a record edge writes to resume from (`sealed_text`,
`seal_problem`): any value changed since it was written is found before the record is used."""

from __future__ import annotations

import hashlib
import json
import math

MAX_DEPTH = 32  # what edge writes nests at most 6 deep (a compress record)
SEAL = "seal"  # a sealed record's own SHA-256 (`sealed_text`)


def loads(text: str | bytes, max_depth: int = MAX_DEPTH, **options):
    """``json.loads(text, **options)``, refusing (ValueError) a document nested deeper than ``max_depth``."""
    try:
        value = json.loads(text, **options)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def depth(value) -> int:
    """How deep ``value`` nests (a scalar is 0; ``[]`` and ``{}`` are 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def is_number(value) -> bool:
    """A finite JSON number read back (not a bool, nan or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sealed_text(record: dict) -> str:
    """``record`` as JSON text, sealed with the SHA-256 of its canonical JSON: `seal_problem` finds any value changed
    since (an edit or damage; a checksum, not a signature: the fields are still checked)."""
    return json.dumps({**record, SEAL: _digest(record)}, indent=2)


def seal_problem(record: dict) -> str | None:
    """Why ``record`` (read back) is not as `sealed_text` wrote it; None when it is."""
    if SEAL not in record:
        return "no seal: written by an older edge, or edited"
    if record[SEAL] != _digest(record):
        return "its seal does not match its content: edited or damaged"
    return None


def _digest(record: dict) -> str:
    """The SHA-256 of ``record``'s canonical JSON, its seal left out."""
    body = {k: v for k, v in record.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
