"""The keys under which an ONNX file we write describes itself (read without torch or onnx).

``edge.card``: the `ModelCard` (StudentNet config, preprocessing, class names) as JSON;
``edge.quant``: how the weights are stored; ``edge.format``: the version of this layout.
"""

from __future__ import annotations

import json

from edge.config import ModelCard

FORMAT_VERSION = "1"
CARD_KEY, QUANT_KEY, FORMAT_KEY = "edge.card", "edge.quant", "edge.format"


class MetadataError(ValueError):
    """An ONNX file without (or with damaged) edge metadata."""


def write_metadata(model, card: ModelCard, quant: dict) -> None:
    """Set our keys on an ``onnx.ModelProto`` (replacing old values)."""
    entries = {CARD_KEY: card.to_json(), QUANT_KEY: json.dumps(quant, sort_keys=True), FORMAT_KEY: FORMAT_VERSION}
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(props: dict[str, str], origin: str) -> tuple[ModelCard, dict]:
    """Parse our keys from a ``{key: value}`` map (ONNX Runtime's ``custom_metadata_map``)."""
    if CARD_KEY not in props:
        raise MetadataError(f"{origin}: no {CARD_KEY!r} metadata: not exported by edge, so its preprocessing "
                            "and classes are unknown (re-export it with `edge export`)")
    try:
        return ModelCard.from_json(props[CARD_KEY]), json.loads(props.get(QUANT_KEY, "{}"))
    except (ValueError, KeyError, TypeError) as err:
        raise MetadataError(f"{origin}: damaged {CARD_KEY!r} metadata ({err})") from None
