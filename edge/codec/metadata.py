"""The keys under which an ONNX file we write describes itself (read without torch or onnx).

``edge.card``: the `ModelCard` (StudentNet config, preprocessing, class names) as JSON;
``edge.quant``: how the weights are stored; ``edge.format``: the version of this layout;
``edge.net``: only on architectures other than StudentNet (the ``cnn`` / ``group`` baselines,
torchvision classifiers), their `edge.models.registry.NetSpec` (arch, the config giving their widths or input,
groups) plus ``parameters`` and ``flops`` as JSON, since the card's StudentNet formulas do not count them.
"""

from __future__ import annotations

import json

from edge.core.config import ModelCard
from edge.core.errors import EdgeError

FORMAT_VERSION = "1"
CARD_KEY, QUANT_KEY, FORMAT_KEY, NET_KEY = "edge.card", "edge.quant", "edge.format", "edge.net"


class MetadataError(EdgeError, ValueError):
    """An ONNX file without (or with damaged) edge metadata."""


def write_metadata(model, card: ModelCard, quant: dict, net: dict | None = None) -> None:
    """Set our keys on an ``onnx.ModelProto`` (replacing old values); ``net``: ``edge.net``, if any."""
    entries = {CARD_KEY: card.to_json(), QUANT_KEY: json.dumps(quant, sort_keys=True), FORMAT_KEY: FORMAT_VERSION}
    if net is not None:
        entries[NET_KEY] = json.dumps(net, sort_keys=True)
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
    if props.get(FORMAT_KEY, FORMAT_VERSION) != FORMAT_VERSION:
        raise MetadataError(f"{origin}: {FORMAT_KEY!r} is {props[FORMAT_KEY][:20]!r}: this edge reads layout "
                            f"{FORMAT_VERSION} (a file from another edge version, or damaged)")
    try:
        card = ModelCard.from_json(props[CARD_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise MetadataError(f"{origin}: damaged {CARD_KEY!r} metadata ({err})") from None
    return card, _json_object(props, QUANT_KEY, origin)


def read_net(props: dict[str, str], origin: str) -> dict | None:
    """The ``edge.net`` entry (a NetSpec, parameters and flops); None on a StudentNet."""
    if NET_KEY not in props:
        return None
    net = _json_object(props, NET_KEY, origin)
    counts = [net.get(key) for key in ("groups", "parameters", "flops")]
    if not isinstance(net.get("arch"), str) or not all(type(n) is int and n >= 0 for n in counts):
        raise MetadataError(f"{origin}: damaged {NET_KEY!r} metadata (it needs arch, groups, parameters and flops)")
    return net


def _json_object(props: dict[str, str], key: str, origin: str) -> dict:
    try:
        value = json.loads(props.get(key, "{}"))
    except ValueError as err:
        raise MetadataError(f"{origin}: damaged {key!r} metadata ({err})") from None
    if not isinstance(value, dict):
        raise MetadataError(f"{origin}: damaged {key!r} metadata (a JSON object expected, not {type(value).__name__})")
    return value


def model_size(card: ModelCard, net: dict | None) -> tuple[int, int]:
    """(parameters, flops per image): from ``edge.net`` where present, a StudentNet's from its config."""
    return (net["parameters"], net["flops"]) if net else (card.config.num_parameters(), card.config.flops())
