"""The keys under which an ONNX file we write describes itself (read without torch or onnx).

``edge.card``: the `ModelCard` (StudentNet config, preprocessing, class names) as JSON;
``edge.quant``: how the weights are stored; ``edge.format``: the version of this layout;
``edge.net``: only on architectures other than StudentNet (the ``cnn`` / ``group`` baselines,
torchvision classifiers), their `edge.models.registry.NetSpec` (arch, the config giving their widths or input,
groups) plus ``parameters`` and ``flops`` as JSON, since the card's StudentNet formulas do not count them.

``edge.crc32`` (layout 2): the CRC-32 of the whole file as written with this value at ``00000000``, so
every byte but the checksum's own is covered (the weights, the entropy-coded streams, the graph, the
metadata) and any 1-32 bit error is caught. `seal` sets it on the serialized file; `check_seal` verifies
it from the file's bytes alone (no onnx, no torch: the runtime path). A layout-2 file whose checksum
entry is missing or damaged is refused too (`read_metadata`); layout-1 files (older ones, the shipped
models) carry none and still load.
"""

from __future__ import annotations

import json

from edge.core.config import ModelCard
from edge.codec.checksum import CHECKSUM_KEY, UNSET
from edge.core.errors import MetadataError
from edge.core.json_text import loads

FORMAT_VERSION = "2"  # layout 1 (card, quant, net) plus the CHECKSUM_KEY entry
READABLE_FORMATS = ("1", FORMAT_VERSION)
CARD_KEY, QUANT_KEY, FORMAT_KEY, NET_KEY = "edge.card", "edge.quant", "edge.format", "edge.net"


def write_metadata(model, card: ModelCard, quant: dict, net: dict | None = None) -> None:
    """Set our keys on an ``onnx.ModelProto`` (replacing old values); ``net``: ``edge.net``, if any."""
    entries = {CARD_KEY: card.to_json(), QUANT_KEY: json.dumps(quant, sort_keys=True), FORMAT_KEY: FORMAT_VERSION,
               CHECKSUM_KEY: UNSET}  # `seal` sets it once the file is serialized
    if net is not None:
        entries[NET_KEY] = json.dumps(net, sort_keys=True)
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(props: dict[str, str], origin: str, sealed: bool = True) -> tuple[ModelCard, dict]:
    """Parse our keys from a ``{key: value}`` map (ONNX Runtime's ``custom_metadata_map``); ``sealed``:
    whether `check_seal` found (and verified) the file's checksum, which layout 2 requires."""
    if CARD_KEY not in props:
        raise MetadataError(f"{origin}: no {CARD_KEY!r} metadata: not exported by edge, so its preprocessing "
                            "and classes are unknown (re-export it with `edge export`)")
    if props.get(FORMAT_KEY, "1") not in READABLE_FORMATS:
        raise MetadataError(f"{origin}: {FORMAT_KEY!r} is {props[FORMAT_KEY][:20]!r}: this edge reads layouts "
                            f"{', '.join(READABLE_FORMATS)} (a file from another edge version, or damaged)")
    if props.get(FORMAT_KEY) == FORMAT_VERSION and not sealed:
        raise MetadataError(f"{origin}: damaged: its {CHECKSUM_KEY!r} checksum entry is missing or changed; refused")
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
        value = loads(props.get(key, "{}"))
    except ValueError as err:
        raise MetadataError(f"{origin}: damaged {key!r} metadata ({err})") from None
    if not isinstance(value, dict):
        raise MetadataError(f"{origin}: damaged {key!r} metadata (a JSON object expected, not {type(value).__name__})")
    return value


def model_size(card: ModelCard, net: dict | None) -> tuple[int, int]:
    """(parameters, flops per image): from ``edge.net`` where present, a StudentNet's from its config."""
    return (net["parameters"], net["flops"]) if net else (card.config.num_parameters(), card.config.flops())
