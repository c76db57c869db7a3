"""Entropy-coded ONNX files (``--entropy``): the code streams stored with fewer bits than their width.

Shared-weight indices and grid codes are far from uniform (k-means clusters near zero hold most
weights), so an entropy coder stores them in fewer bits than their fixed width, as Deep
Compression's Huffman stage did. We use the standard library's coders, not a hand-written one:
each code stream (`edge.codec.quant` ``codes4``: one file-wide stream per width), laid out one code per
byte or as packed, is compressed with LZMA (LZ77 + an adaptive range coder), DEFLATE's Huffman
coding alone (Deep Compression's choice: per-block Huffman tables), full DEFLATE and BZIP2, and the
smallest of those is kept.

ONNX has no standard operator that decompresses, so the honest design is a file that edge
expands before ONNX Runtime sees it: each coded stream becomes one node of the custom domain
``edge.entropy`` (op ``EntropyCodedCodes``) whose output is the plain stream's name and whose
attributes hold the coded bytes. `expand` turns such a file back into the plain ONNX file (the
stream as an initializer, bit for bit); `edge.inference.runtime.OnnxClassifier` (so `edge predict`,
``bench``, ``info``) does that in memory before creating the session, and ``edge convert --to
onnx`` writes it out. A plain ONNX Runtime refuses the file at session creation, naming the
unregistered ``edge.entropy`` op, and the file's doc string says what to do. The size that counts
is the file's size on disk. Expanding needs numpy and the standard library alone (a protobuf walk,
`edge.codec.onnx_scan`: the runtime-only install has neither torch nor onnx); coding uses onnx.

Files are untrusted: `expand` checks every node (one output naming the ``codesN`` stream of its own
width, defined once) and its declared size against what the graph's unpacking reads before
decoding anything, and decoding stops one byte past that size, so a decompression bomb, a
truncated or padded stream is an `EntropyError` naming the stream, never a large allocation.
"""

from __future__ import annotations

import bz2
import lzma
import mmap
import zlib

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.core.errors import EdgeError
from edge.core.files import InputError, check_input
from edge.codec.onnx_scan import Unparsable, fields, varints
from edge.codec.checksum import check_seal, seal
from edge.core.errors import MetadataError
from edge.codec.quant import code_stream_bits, pack_codes, unpack_codes

if TYPE_CHECKING:
    import onnx

DOMAIN = "edge.entropy"
OP = "EntropyCodedCodes"
HOW_TO_OPEN = "entropy-coded weights: open with edge, or run `edge convert FILE --to onnx -o plain.onnx`"
_LZMA_RAW = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 4, "lp": 0, "pb": 0}]



def _huffman(data: bytes) -> bytes:
    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    return coder.compress(data) + coder.flush()


CODECS = {  # name -> (compress, a fresh decompressor: bounded, incremental, says where its stream ends)
    "lzma": (lambda data: lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_RAW),
             lambda: lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_RAW)),
    "huffman": (_huffman, lambda: zlib.decompressobj(-15)),
    "deflate": (lambda data: zlib.compress(data, 9), zlib.decompressobj),
    "bzip2": (lambda data: bz2.compress(data, 9), bz2.BZ2Decompressor),
}
LAYOUTS = ("symbols", "packed")  # one code per byte, or the dense bit stream itself
# What a file may make edge allocate: its decoded streams together (256 Mi codes at 8 bits, far above any
# model edge exports), and the file itself (protobuf's limit on one message: ONNX's limit without external data)
MAX_STREAM_BYTES = 1 << 28
MAX_ONNX_BYTES = (1 << 31) - 1
_ATTRIBUTES = {"codec": "STRING", "layout": "STRING", "bits": "INT", "bytes": "INT", "data": "STRING"}


class EntropyError(EdgeError, ValueError):
    """An entropy-coded stream that does not decode to what its node says."""


def encode_stream(packed: np.ndarray, bits: int) -> tuple[str, str, bytes]:
    """A packed code stream (`edge.codec.quant.pack_codes`) -> (codec, layout, coded bytes), the smallest
    of every codec in `CODECS` on every layout in `LAYOUTS`."""
    symbols = unpack_codes(packed, bits, (len(packed) * 8 // bits,))
    layouts = {"symbols": symbols.tobytes(), "packed": np.ascontiguousarray(packed, np.uint8).tobytes()}
    return min(((codec, layout, compress(data)) for codec, (compress, _) in CODECS.items()
                for layout, data in layouts.items()), key=lambda item: len(item[2]))


def decode_stream(codec: str, layout: str, coded: bytes, bits: int, nbytes: int) -> np.ndarray:
    """Inverse of `encode_stream`: the packed stream of ``nbytes`` bytes; EntropyError when corrupt.
    Decoding stops one byte past what ``nbytes`` asks for, so a stream that expands further (a
    decompression bomb) costs no more memory than an honest one."""
    if codec not in CODECS or layout not in LAYOUTS:
        raise EntropyError(f"unknown entropy coding {codec}/{layout} (edge knows {', '.join(CODECS)} on "
                           f"{', '.join(LAYOUTS)})")
    if not 1 <= bits <= 8 or not 1 <= nbytes <= MAX_STREAM_BYTES:
        raise EntropyError(f"a stream of {nbytes} bytes of {bits}-bit codes: edge reads 1..8 bits and 1.."
                           f"{MAX_STREAM_BYTES:,} bytes")
    count = nbytes * 8 // bits if layout == "symbols" else nbytes
    data = np.frombuffer(_inflate(codec, coded, count), np.uint8)
    if layout == "packed":
        return data
    if data.max(initial=0) >= 1 << bits:
        raise EntropyError(f"a decoded code does not fit {bits} bits")
    return pack_codes(data, bits)


def _inflate(codec: str, coded: bytes, count: int) -> bytes:
    """Exactly ``count`` bytes from one complete ``codec`` stream, never more than ``count + 1`` in memory."""
    decoder = CODECS[codec][1]()
    try:
        data = decoder.decompress(coded, count + 1)
    except (lzma.LZMAError, zlib.error, OSError, ValueError, EOFError) as err:
        raise EntropyError(f"corrupt {codec} stream: {err}") from None
    if len(data) > count:
        raise EntropyError(f"{codec} stream decodes to more than the {count} bytes its node declares")
    if not decoder.eof:
        raise EntropyError(f"corrupt {codec} stream: it ends early, after {len(data)} of {count} bytes (truncated)")
    if decoder.unused_data:
        raise EntropyError(f"corrupt {codec} stream: {len(decoder.unused_data)} bytes follow its end")
    if len(data) != count:
        raise EntropyError(f"{codec} stream decodes to {len(data)} bytes, expected {count}")
    return data


def is_entropy_coded(model: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in model.graph.node)


def entropy_code(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every code stream initializer (``codes1`` .. ``codes8``) replaced by an
    `OP` node holding its entropy-coded codes (unchanged when it has none)."""
    import onnx
    from onnx import helper, numpy_helper

    coded = onnx.ModelProto()
    coded.CopyFrom(model)
    graph = coded.graph
    streams = [t for t in graph.initializer if code_stream_bits(t.name)]
    if not streams:  # every layer kept in fp16 (a model of tiny layers): nothing to code
        return coded
    nodes = []
    for tensor in streams:
        bits, packed = code_stream_bits(tensor.name), numpy_helper.to_array(tensor)
        codec, layout, data = encode_stream(packed, bits)
        nodes.append(helper.make_node(OP, [], [tensor.name], domain=DOMAIN, codec=codec, layout=layout, bits=bits,
                                      bytes=len(packed), data=data))
        graph.initializer.remove(tensor)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    coded.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    coded.doc_string = HOW_TO_OPEN
    return coded


def expand(model: onnx.ModelProto) -> onnx.ModelProto:
    """The plain ONNX model of an entropy-coded one (each `OP` node back to its initializer; `expand_bytes`
    on the serialized model); EntropyError on a node that is not one `encode_stream` wrote for a stream
    the graph reads."""
    import onnx

    try:
        plain = expand_bytes(model.SerializeToString())
    except Unparsable:
        raise EntropyError("its bytes are not ONNX protobuf") from None
    return model if plain is None else onnx.load_from_string(plain)


# ONNX's protobuf field numbers (onnx.proto): what `expand_bytes` reads and writes without the onnx package
_MODEL_DOC, _MODEL_GRAPH, _MODEL_OPSET = 6, 7, 8  # ModelProto
_OPSET_DOMAIN = 1  # OperatorSetIdProto
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5  # GraphProto
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7  # NodeProto
_ATTR_NAME, _ATTR_INT, _ATTR_BYTES, _ATTR_TYPE = 1, 3, 4, 20  # AttributeProto
_ATTRIBUTE_TYPES = {"INT": 2, "STRING": 3}  # AttributeProto.AttributeType
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_INT64, _TENSOR_NAME, _TENSOR_RAW, _TENSOR_LOCATION = 1, 2, 7, 8, 9, 14
_INT_TYPES = {6: np.dtype("<i4"), 7: np.dtype("<i8")}  # TensorProto.DataType: INT32, INT64
_UINT8, _EXTERNAL = 2, 1  # TensorProto.DataType.UINT8, DataLocation.EXTERNAL


def expand_bytes(data: bytes | memoryview) -> bytes | None:
    """The serialized plain model of the serialized ONNX model ``data``, each `OP` node replaced by its
    decoded stream as an initializer, without the onnx package (the runtime path imports neither torch
    nor onnx); None when ``data`` has no `OP` node (a plain file). EntropyError on a node that is not
    one `encode_stream` wrote for a stream the graph reads, `Unparsable` on bytes that are not protobuf."""
    view, parts, coded = memoryview(data), [], False
    for number, value, span in fields(view, 0, len(view)):
        if number == _MODEL_GRAPH and isinstance(value, tuple):
            graph, expanded = _expand_graph(view, value)
            coded |= expanded
            parts.append(_message(_MODEL_GRAPH, graph))
        elif number == _MODEL_OPSET and isinstance(value, tuple) and _opset_domain(view, value) == DOMAIN:
            continue
        elif number == _MODEL_DOC and isinstance(value, tuple) and _text(view, value) == HOW_TO_OPEN:
            continue
        else:
            parts.append(bytes(view[span[0]:span[1]]))
    if not coded:
        return None
    plain = b"".join(parts)
    if len(plain) > MAX_ONNX_BYTES:
        raise EntropyError(f"its plain model is {len(plain):,} bytes, more than one ONNX file holds")
    return plain


def _expand_graph(view: memoryview, span: tuple[int, int]) -> tuple[bytes, bool]:
    """(the graph's bytes with every `OP` node replaced by an initializer, whether it had one)."""
    kept, nodes, initializers = [], [], {}
    for number, value, whole in fields(view, *span):
        if number == _GRAPH_NODE and isinstance(value, tuple):
            nodes.append(_node(view, value))
            if nodes[-1]["domain"] == DOMAIN:
                continue  # replaced by its stream below
        elif number == _GRAPH_INITIALIZER and isinstance(value, tuple):
            name, tensor = _initializer(view, value)
            initializers[name] = tensor
        kept.append(bytes(view[whole[0]:whole[1]]))
    taken = set(initializers) | {o for n in nodes if n["domain"] != DOMAIN for o in n["outputs"]}
    total, streams = 0, []
    for node in [n for n in nodes if n["domain"] == DOMAIN]:
        name, codec, layout, bits, nbytes, data = _stream_node(node, taken)
        _check_graph_reads(initializers, name, nbytes)
        total += nbytes
        if total > MAX_STREAM_BYTES:
            raise EntropyError(f"its streams declare more than {MAX_STREAM_BYTES:,} bytes together (edge's limit)")
        try:
            packed = decode_stream(codec, layout, data, bits, nbytes)
        except EntropyError as err:
            raise EntropyError(f"stream {name}: {err}") from None
        streams.append(_message(_GRAPH_INITIALIZER, _uint8_tensor(name, packed)))
        taken.add(name)
    return b"".join(kept + streams), bool(streams)


def _node(view: memoryview, span: tuple[int, int]) -> dict:
    node = {"domain": "", "op_type": "", "inputs": [], "outputs": [], "attributes": {}}
    for number, value, _ in fields(view, *span):
        if not isinstance(value, tuple):
            continue
        if number == _NODE_INPUT:
            node["inputs"].append(_text(view, value))
        elif number == _NODE_OUTPUT:
            node["outputs"].append(_text(view, value))
        elif number == _NODE_OP:
            node["op_type"] = _text(view, value)
        elif number == _NODE_DOMAIN:
            node["domain"] = _text(view, value)
        elif number == _NODE_ATTRIBUTE:
            attribute = _attribute(view, value)
            node["attributes"][attribute["name"]] = attribute  # the last of a name wins, as in onnx
    return node


def _attribute(view: memoryview, span: tuple[int, int]) -> dict:
    attribute = {"name": "", "type": 0, "i": 0, "s": b""}
    for number, value, _ in fields(view, *span):
        if number == _ATTR_NAME and isinstance(value, tuple):
            attribute["name"] = _text(view, value)
        elif number == _ATTR_INT and isinstance(value, int):
            attribute["i"] = _int64(value)
        elif number == _ATTR_BYTES and isinstance(value, tuple):
            attribute["s"] = bytes(view[value[0]:value[1]])
        elif number == _ATTR_TYPE and isinstance(value, int):
            attribute["type"] = value
    return attribute


def _initializer(view: memoryview, span: tuple[int, int]) -> tuple[str, dict]:
    """(name, {"type", "raw", "int64"}) of an initializer; EntropyError when its data is in an external file."""
    name, tensor = "", {"type": 0, "raw": None, "int64": []}
    for number, value, _ in fields(view, *span):
        if number == _TENSOR_NAME and isinstance(value, tuple):
            name = _text(view, value)
        elif number == _TENSOR_TYPE and isinstance(value, int):
            tensor["type"] = value
        elif number == _TENSOR_RAW and isinstance(value, tuple):
            tensor["raw"] = view[value[0]:value[1]]
        elif number == _TENSOR_INT64:
            tensor["int64"] += list(varints(view, value)) if isinstance(value, tuple) else [value]
        elif number == _TENSOR_LOCATION and value == _EXTERNAL:
            raise EntropyError("its weights are in external data files, which edge does not read (edge's ONNX "
                               "files hold their weights)")
    return name, tensor


def _int_values(tensor: dict) -> np.ndarray | None:
    """An integer initializer's values, flat (None when it holds none that edge reads)."""
    kind = _INT_TYPES.get(tensor["type"])
    if kind is None:
        return None
    if tensor["raw"] is not None:
        return np.frombuffer(tensor["raw"], kind) if len(tensor["raw"]) % kind.itemsize == 0 else None
    return np.array([_int64(v) for v in tensor["int64"]], np.int64)


def _int64(value: int) -> int:
    """A varint read as protobuf's int64 (two's complement in 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _stream_node(node: dict, taken: set[str]) -> tuple[str, str, str, int, int, bytes]:
    """An `OP` node's (stream name, codec, layout, bits, bytes, coded data), checked: no inputs, one
    output naming a code stream of its width that nothing else defines, every attribute of its type."""
    if node["op_type"] != OP:
        raise EntropyError(f"unknown {DOMAIN} node {node['op_type']!r} (this edge reads {OP})")
    attrs, outputs = node["attributes"], node["outputs"]
    problems = [f"attribute {key} missing or not {kind.lower()}" for key, kind in _ATTRIBUTES.items()
                if key not in attrs or attrs[key]["type"] != _ATTRIBUTE_TYPES[kind]]
    problems += ["it has inputs"] * bool(node["inputs"]) + [f"{len(outputs)} outputs, not 1"] * (len(outputs) != 1)
    if problems:
        raise EntropyError(f"damaged {OP} node {outputs}: {'; '.join(problems)}")
    name, bits = outputs[0], attrs["bits"]["i"]
    if code_stream_bits(name) != bits or name in taken:
        problem = "is defined twice" if name in taken else f"is not the stream of {bits}-bit codes"
        raise EntropyError(f"damaged {OP} node: its output {name!r} {problem}")
    try:
        codec, layout = attrs["codec"]["s"].decode("ascii"), attrs["layout"]["s"].decode("ascii")
    except UnicodeDecodeError:
        raise EntropyError(f"stream {name}: its codec or layout is not a name") from None
    return name, codec, layout, bits, attrs["bytes"]["i"], attrs["data"]["s"]


def _check_graph_reads(initializers: dict[str, dict], name: str, nbytes: int) -> None:
    """A stream must hold exactly what the exporter's unpacking graph reads of it (checked before
    decoding anything): ``<stream>.bits`` bits for fewer than 8 bits per code (a Slice), else the
    sum of its one Split's ``<stream>.<dtype>.sizes`` codes. Graphs naming neither are not checked."""
    counts = {key: _int_values(tensor) for key, tensor in initializers.items()
              if key == f"{name}.bits" or (key.startswith(f"{name}.") and key.endswith(".sizes"))}
    if f"{name}.bits" in counts:
        values = counts[f"{name}.bits"]
        expected = -(-int(values[0]) // 8) if values is not None and values.size == 1 else None
    elif len(counts) == 1 and code_stream_bits(name) == 8:
        values = next(iter(counts.values()))
        expected = int(values.sum()) if values is not None else None
    else:
        return
    if expected != nbytes:
        raise EntropyError(f"stream {name}: its node declares {nbytes} bytes but the graph reads "
                           f"{expected if expected is not None else 'an unreadable count of'} bytes")


def _text(view: memoryview, span: tuple[int, int]) -> str:
    return bytes(view[span[0]:span[1]]).decode("utf-8", "replace")


def _opset_domain(view: memoryview, span: tuple[int, int]) -> str:
    return next((_text(view, v) for n, v, _ in fields(view, *span) if n == _OPSET_DOMAIN and isinstance(v, tuple)), "")


def _key(number: int, wire: int) -> bytes:
    return _varint_bytes(number << 3 | wire)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a submessage, string or bytes."""
    return _key(number, 2) + _varint_bytes(len(payload)) + payload


def _uint8_tensor(name: str, values: np.ndarray) -> bytes:
    """A TensorProto of one uint8 dimension, as `onnx.numpy_helper.from_array` writes it."""
    return (_key(_TENSOR_DIMS, 0) + _varint_bytes(len(values)) + _key(_TENSOR_TYPE, 0) + _varint_bytes(_UINT8)
            + _message(_TENSOR_NAME, name.encode()) + _message(_TENSOR_RAW, values.astype(np.uint8).tobytes()))


def write_plain(source, output) -> int:
    """Write the plain ONNX file of the edge ONNX file ``source`` to ``output`` (atomically, after
    `edge.core.files`' output guard); -> bytes written. A file that is not entropy-coded is copied."""
    from edge.core.files import atomic_write, check_output

    source = Path(source)
    check_output(output, inputs=(source,), writes_model=True, what="plain ONNX file")
    data = _read(source)
    plain = _plain_bytes(source, data)
    atomic_write(output, lambda f: f.write(data if plain is None else plain))
    return len(data if plain is None else plain)


def _plain_bytes(path: Path, data: bytes) -> bytes | None:
    """`expand_bytes` of the file ``path`` read as ``data``, naming the file in every error."""
    try:
        plain = expand_bytes(data)
        return None if plain is None else seal(plain)
    except EntropyError as err:
        raise EntropyError(f"{path}: {err}") from None
    except Unparsable:
        raise EntropyError(f"{path}: not an ONNX file ({_what_it_is(path) or 'its bytes are not ONNX protobuf'})") \
            from None


def session_source(path) -> str | bytes:
    """What to hand ONNX Runtime for the file at ``path``: the path itself, or the expanded model's
    bytes when the file is entropy-coded. A plain file is recognised from its bytes (no `DOMAIN` in
    them, searched without reading the file into memory) and never parsed here; no file needs the
    onnx package."""
    path = Path(path)
    try:
        marked = _holds_marker(path)
    except OSError:
        return str(path)  # ONNX Runtime names what is wrong with it
    if not marked:
        return str(path)
    plain = _plain_bytes(path, _read(path))
    return str(path) if plain is None else plain


def _holds_marker(path: Path) -> bool:
    if check_input(path, "ONNX file", MAX_ONNX_BYTES) == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return view.find(DOMAIN.encode()) >= 0


def _what_it_is(path: Path) -> str | None:
    """What a file that is not ONNX holds, from its first bytes (`edge.core.formats.sniff`), if edge knows."""
    from edge.core.formats import sniff_file

    try:
        kind = sniff_file(path)
    except OSError:
        return None
    model = {"torch-zip": "a torch file", "torch-legacy": "a torch file", "pickle": "a weights pickle"}.get(kind)
    return model and f"{model}: `edge export` writes an ONNX file from it"


def _read(path: Path) -> bytes:
    """The bytes of the ONNX file at ``path`` (checked as an input first)."""
    try:
        check_input(path, "ONNX file", MAX_ONNX_BYTES)
        check_seal(path)
        return path.read_bytes()
    except (InputError, MetadataError):  # names the file already
        raise
    except OSError as err:
        raise EntropyError(f"{path}: not an ONNX file ({err.strerror or err})") from None
