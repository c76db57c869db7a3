"""Reading JSON that came from a file or a model's metadata: its nesting is bounded, so a crafted
``[[[[...`` (a few hundred kB) is a ValueError naming the depth like any other malformed JSON, never
Python's RecursionError (a traceback)."""

from __future__ import annotations

import json

MAX_DEPTH = 32  # what edge writes nests at most 6 deep (a compress record)


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
