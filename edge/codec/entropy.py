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
is the file's size on disk. Pure numpy + onnx + the standard library: no torch.

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
from edge.codec.metadata import MetadataError, check_seal, seal
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
    """The plain ONNX model of an entropy-coded one (each `OP` node back to its initializer);
    EntropyError on a node that is not one `encode_stream` wrote for a stream the graph reads."""
    import onnx
    from onnx import numpy_helper

    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    graph = plain.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node if n.domain != DOMAIN for o in n.output}
    total = 0
    for node in [n for n in graph.node if n.domain == DOMAIN]:
        name, codec, layout, bits, nbytes, coded = _stream_node(node, taken)
        _check_graph_reads(graph, name, nbytes)
        total += nbytes
        if total > MAX_STREAM_BYTES:
            raise EntropyError(f"its streams declare more than {MAX_STREAM_BYTES:,} bytes together (edge's limit)")
        try:
            packed = decode_stream(codec, layout, coded, bits, nbytes)
        except EntropyError as err:
            raise EntropyError(f"stream {name}: {err}") from None
        graph.initializer.append(numpy_helper.from_array(packed, name))
        graph.node.remove(node)
        taken.add(name)
    kept = [o for o in plain.opset_import if o.domain != DOMAIN]
    del plain.opset_import[:]
    plain.opset_import.extend(kept)
    if plain.doc_string == HOW_TO_OPEN:
        plain.doc_string = ""
    return plain


def _stream_node(node, taken: set[str]) -> tuple[str, str, str, int, int, bytes]:
    """An `OP` node's (stream name, codec, layout, bits, bytes, coded data), checked: no inputs, one
    output naming a code stream of its width that nothing else defines, every attribute of its type."""
    from onnx import AttributeProto

    if node.op_type != OP:
        raise EntropyError(f"unknown {DOMAIN} node {node.op_type!r} (this edge reads {OP})")
    attrs = {a.name: a for a in node.attribute}
    problems = [f"attribute {key} missing or not {kind.lower()}" for key, kind in _ATTRIBUTES.items()
                if key not in attrs or attrs[key].type != getattr(AttributeProto, kind)]
    problems += ["it has inputs"] * bool(node.input) + [f"{len(node.output)} outputs, not 1"] * (len(node.output) != 1)
    if problems:
        raise EntropyError(f"damaged {OP} node {list(node.output)}: {'; '.join(problems)}")
    name, bits = node.output[0], attrs["bits"].i
    if code_stream_bits(name) != bits or name in taken:
        problem = "is defined twice" if name in taken else f"is not the stream of {bits}-bit codes"
        raise EntropyError(f"damaged {OP} node: its output {name!r} {problem}")
    try:
        codec, layout = attrs["codec"].s.decode("ascii"), attrs["layout"].s.decode("ascii")
    except UnicodeDecodeError:
        raise EntropyError(f"stream {name}: its codec or layout is not a name") from None
    return name, codec, layout, bits, attrs["bytes"].i, attrs["data"].s


def _check_graph_reads(graph, name: str, nbytes: int) -> None:
    """A stream must hold exactly what the exporter's unpacking graph reads of it (checked before
    decoding anything): ``<stream>.bits`` bits for fewer than 8 bits per code (a Slice), else the
    sum of its one Split's ``<stream>.<dtype>.sizes`` codes. Graphs naming neither are not checked."""
    from onnx import numpy_helper

    counts = {t.name: numpy_helper.to_array(t).reshape(-1) for t in graph.initializer
              if t.name == f"{name}.bits" or (t.name.startswith(f"{name}.") and t.name.endswith(".sizes"))}
    if f"{name}.bits" in counts:
        values = counts[f"{name}.bits"]
        expected = -(-int(values[0]) // 8) if values.size == 1 else None
    elif len(counts) == 1 and code_stream_bits(name) == 8:
        expected = int(next(iter(counts.values())).sum())
    else:
        return
    if expected != nbytes:
        raise EntropyError(f"stream {name}: its node declares {nbytes} bytes but the graph reads "
                           f"{expected if expected is not None else 'an unreadable count of'} bytes")


def write_plain(source, output) -> int:
    """Write the plain ONNX file of the edge ONNX file ``source`` to ``output`` (atomically, after
    `edge.core.files`' output guard); -> bytes written. A file that is not entropy-coded is copied."""
    from edge.core.files import atomic_write, check_output

    source = Path(source)
    check_output(output, inputs=(source,), writes_model=True, what="plain ONNX file")
    data = _plain_bytes(source, _load(source))
    atomic_write(output, lambda f: f.write(data))
    return len(data)


def _plain_bytes(path: Path, model: "onnx.ModelProto") -> bytes:
    """The serialized plain model of ``model`` (read from ``path``, named in every error)."""
    from google.protobuf.message import EncodeError

    try:
        return seal((expand(model) if is_entropy_coded(model) else model).SerializeToString())
    except EntropyError as err:
        raise EntropyError(f"{path}: {err}") from None
    except (EncodeError, ValueError) as err:
        raise EntropyError(f"{path}: its plain model cannot be written as one ONNX file ({err})") from None


def session_source(path) -> str | bytes:
    """What to hand ONNX Runtime for the file at ``path``: the path itself, or the expanded model's
    bytes when the file is entropy-coded. Only such a file needs the ``onnx`` package: a plain one
    is recognised from its bytes (no `DOMAIN` in them, searched without reading the file into memory)
    and never parsed here."""
    try:
        marked = _holds_marker(Path(path))
    except OSError:
        return str(path)  # ONNX Runtime names what is wrong with it
    if not marked:
        return str(path)
    model = _load(Path(path))
    return _plain_bytes(Path(path), model) if is_entropy_coded(model) else str(path)


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


def _load(path: Path) -> "onnx.ModelProto":
    """The ONNX file at ``path`` with its weights inside it (external data files are refused, not read)."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise EntropyError(f"{path}: {HOW_TO_OPEN}; reading it needs the onnx package (pip install onnx)") from None
    try:
        check_input(path, "ONNX file", MAX_ONNX_BYTES)
        check_seal(path)
        model = onnx.load(str(path), load_external_data=False)
    except (InputError, MetadataError):  # names the file already
        raise
    except (DecodeError, OSError, ValueError) as err:
        raise EntropyError(f"{path}: not an ONNX file ({_what_it_is(path) or getattr(err, 'strerror', None) or err})") \
            from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise EntropyError(f"{path}: its weights are in external data files, which edge does not read "
                           "(edge's ONNX files hold their weights)")
    return model
