"""Entropy-coded ONNX files (``--entropy``): the code streams stored with fewer bits than their width.

Shared-weight indices and grid codes are far from uniform (k-means clusters near zero hold most
weights), so an entropy coder stores them in fewer bits than their fixed width, as Deep
Compression's Huffman stage did. We use the standard library's coders, not a hand-written one:
each code stream (`edge.quant` ``codes4``: one file-wide stream per width), laid out one code per
byte or as packed, is compressed with LZMA (LZ77 + an adaptive range coder), DEFLATE's Huffman
coding alone (Deep Compression's choice: per-block Huffman tables), full DEFLATE and BZIP2, and the
smallest of those is kept.

ONNX has no standard operator that decompresses, so the honest design is a file that edge
expands before ONNX Runtime sees it: each coded stream becomes one node of the custom domain
``edge.entropy`` (op ``EntropyCodedCodes``) whose output is the plain stream's name and whose
attributes hold the coded bytes. `expand` turns such a file back into the plain ONNX file (the
stream as an initializer, bit for bit); `edge.runtime.OnnxClassifier` (so `edge predict`,
``bench``, ``info``) does that in memory before creating the session, and ``edge convert --to
onnx`` writes it out. A plain ONNX Runtime refuses the file at session creation, naming the
unregistered ``edge.entropy`` op, and the file's doc string says what to do. The size that counts
is the file's size on disk. Pure numpy + onnx + the standard library: no torch.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import EdgeError
from edge.quant import code_stream_bits, pack_codes, unpack_codes

if TYPE_CHECKING:
    import onnx

DOMAIN = "edge.entropy"
OP = "EntropyCodedCodes"
HOW_TO_OPEN = "entropy-coded weights: open with edge, or run `edge convert FILE --to onnx -o plain.onnx`"
_LZMA_RAW = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 4, "lp": 0, "pb": 0}]



def _huffman(data: bytes) -> bytes:
    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    return coder.compress(data) + coder.flush()


CODECS = {
    "lzma": (lambda data: lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_RAW),
             lambda data: lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_LZMA_RAW)),
    "huffman": (_huffman, lambda data: zlib.decompress(data, -15)),
    "deflate": (lambda data: zlib.compress(data, 9), zlib.decompress),
    "bzip2": (lambda data: bz2.compress(data, 9), bz2.decompress),
}
LAYOUTS = ("symbols", "packed")  # one code per byte, or the dense bit stream itself


class EntropyError(EdgeError, ValueError):
    """An entropy-coded stream that does not decode to what its node says."""


def encode_stream(packed: np.ndarray, bits: int) -> tuple[str, str, bytes]:
    """A packed code stream (`edge.quant.pack_codes`) -> (codec, layout, coded bytes), the smallest
    of every codec in `CODECS` on every layout in `LAYOUTS`."""
    symbols = unpack_codes(packed, bits, (len(packed) * 8 // bits,))
    layouts = {"symbols": symbols.tobytes(), "packed": np.ascontiguousarray(packed, np.uint8).tobytes()}
    return min(((codec, layout, compress(data)) for codec, (compress, _) in CODECS.items()
                for layout, data in layouts.items()), key=lambda item: len(item[2]))


def decode_stream(codec: str, layout: str, coded: bytes, bits: int, nbytes: int) -> np.ndarray:
    """Inverse of `encode_stream`: the packed stream of ``nbytes`` bytes; EntropyError when corrupt."""
    if codec not in CODECS or layout not in LAYOUTS:
        raise EntropyError(f"unknown entropy coding {codec}/{layout} (edge knows {', '.join(CODECS)} on "
                           f"{', '.join(LAYOUTS)})")
    try:
        data = np.frombuffer(CODECS[codec][1](coded), np.uint8)
    except (lzma.LZMAError, zlib.error, OSError, ValueError) as err:
        raise EntropyError(f"corrupt {codec} stream: {err}") from None
    count = nbytes * 8 // bits if layout == "symbols" else nbytes
    if len(data) != count:
        raise EntropyError(f"{codec} stream decodes to {len(data)} bytes, expected {count}")
    if layout == "packed":
        return data
    if data.max(initial=0) >= 1 << bits:
        raise EntropyError(f"a decoded code does not fit {bits} bits")
    return pack_codes(data, bits)


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
    """The plain ONNX model of an entropy-coded one (each `OP` node back to its initializer)."""
    import onnx
    from onnx import helper, numpy_helper

    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    graph = plain.graph
    for node in [n for n in graph.node if n.domain == DOMAIN]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != OP or not {"codec", "layout", "bits", "bytes", "data"} <= attrs.keys():
            raise EntropyError(f"unknown {DOMAIN} node {node.op_type!r} (this edge reads {OP})")
        packed = decode_stream(attrs["codec"].decode(), attrs["layout"].decode(), attrs["data"], attrs["bits"],
                               attrs["bytes"])
        graph.initializer.append(numpy_helper.from_array(packed, node.output[0]))
        graph.node.remove(node)
    kept = [o for o in plain.opset_import if o.domain != DOMAIN]
    del plain.opset_import[:]
    plain.opset_import.extend(kept)
    if plain.doc_string == HOW_TO_OPEN:
        plain.doc_string = ""
    return plain


def write_plain(source, output) -> int:
    """Write the plain ONNX file of the edge ONNX file ``source`` to ``output`` (atomically, after
    `edge.files`' output guard); -> bytes written. A file that is not entropy-coded is copied."""
    from edge.files import atomic_write, check_output

    source = Path(source)
    check_output(output, inputs=(source,), writes_model=True, what="plain ONNX file")
    data = _load(source)
    data = expand(data).SerializeToString() if is_entropy_coded(data) else data.SerializeToString()
    atomic_write(output, lambda f: f.write(data))
    return len(data)


def session_source(path) -> str | bytes:
    """What to hand ONNX Runtime for the file at ``path``: the path itself, or the expanded model's
    bytes when the file is entropy-coded. Only such a file needs the ``onnx`` package: a plain one
    is recognised from its bytes (no `DOMAIN` in them) and never parsed here."""
    try:
        plain = DOMAIN.encode() not in Path(path).read_bytes()
    except OSError:
        return str(path)  # ONNX Runtime names what is wrong with it
    if plain:
        return str(path)
    model = _load(Path(path))
    return expand(model).SerializeToString() if is_entropy_coded(model) else str(path)


def _load(path: Path) -> "onnx.ModelProto":
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise EntropyError(f"{path}: {HOW_TO_OPEN}; reading it needs the onnx package (pip install onnx)") from None
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as err:
        raise EntropyError(f"{path}: not an ONNX file ({err})") from None
