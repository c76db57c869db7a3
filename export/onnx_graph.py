"""Graph-level weight formats: the float ONNX graph torch.onnx.export wrote, with the weights of its
Conv / Gemm / MatMul layers stored as encoded.

Encodings (the computation is always fp32):
- `FloatWeight` fp32: a float initializer; fp16: a float16 initializer + Cast to float.
- `MinMaxCode` (uintN, N <= 8): codes plus the grid's offset (min) and step ((max - min) / levels),
  per tensor (fp32) or per output channel (fp16), decoded as ``offset + q * step`` (Mul -> Add).
- `LowRankWeight` (--low-rank): two float factors and ``MatMul -> Reshape``.
- `CodebookCode` (kmeansK): codes that index an fp16 codebook, decoded by Gather (and a Mul by
  the fp16 scale of each output channel, per channel).
Codes of every width go into one dense bit stream per width (``codes4``: all 4-bit codes of the
file, `edge.codec.quant.pack_codes`), unpacked once by ``BitShift -> Mod`` into bit planes and summed by a
MatMul with the powers of two, then Split into the tensors. Every input of those nodes is a
constant, so ONNX Runtime's constant folding turns them back into float weights when the session
is created: no decoding is left at run time (`edge.export.exporter.leftover_dequantization` checks it).

`apply_weight_formats` puts the decode nodes in place of each layer's weight and bias initializers
(found by torch's name, ``cnn.0.0.weight``, else by identical values or, for a MatMul, transposed). `compact` drops what costs
bytes and says nothing (node names, doc strings, Constant nodes, default attributes, long
intermediate names); weight initializers keep names that say what they hold (``cnn.1.3.w.step``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.core.errors import CheckpointError
from edge.codec.entropy import entropy_code
from edge.codec.checksum import seal
from edge.core.errors import EdgeError
from edge.core.files import atomic_write
from edge.models.fold import FoldedLayer
from edge.export.lowrank import LowRankWeight
from edge.codec.quant import CodebookCode, FloatWeight, MinMaxCode, code_stream_name, pack_codes

OPSET = 17  # BitShift (the code streams' unpacking) needs 11
INPUT_NAME, OUTPUT_NAME = "image", "logits"
HALF = "h"  # name suffix of float16 initializers (cast to float32 in the graph)
_ALL_EQUAL = {"pads": 0, "strides": 1, "dilations": 1}  # absent = this value on every axis (Conv, pooling)


class GraphError(EdgeError, ValueError):
    """A model whose exported ONNX graph does not hold a layer's weights as an initializer."""


@dataclass
class _GraphBuilder:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    shared: set = field(default_factory=set)
    streams: dict = field(default_factory=dict)  # (bits, dtype) -> [(flat output name, codes)]
    prelude: list = field(default_factory=list)
    temps: int = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, prelude: bool = False, **attrs) -> str:
        """Add a node (to the code streams' unpacking with ``prelude``); -> its output's name."""
        output = output or self.temp()
        (self.prelude if prelude else self.nodes).append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def tensor(self, name: str, encoding) -> str:
        """Store one tensor as encoded; return the name of its float32 value in the graph."""
        if isinstance(encoding, MinMaxCode):
            return self._minmax(name, encoding)
        if isinstance(encoding, CodebookCode):
            return self._codebook(name, encoding)
        if isinstance(encoding, LowRankWeight):
            product = self.node("MatMul", [self.tensor(f"{name}.u", encoding.left), self.tensor(f"{name}.v", encoding.right)])
            return self.node("Reshape", [product, self.shape(encoding.shape)], name)
        array = encoding.array
        if array.dtype == np.float32:
            return self.const(name, array)
        return self.node("Cast", [self.const(f"{name}.{HALF}", array)], name, to=TensorProto.FLOAT)

    def _minmax(self, name: str, code: MinMaxCode) -> str:
        dtype = np.float32 if code.range_dtype is None else code.range_dtype
        step = self.tensor(f"{name}.step", FloatWeight(code.step.astype(dtype)))
        offset = self.tensor(f"{name}.offset", FloatWeight(code.offset.astype(dtype)))
        q = self._codes(name, code.q, code.bits, TensorProto.FLOAT)
        return self.node("Add", [self.node("Mul", [q, step]), offset], name)

    def _codebook(self, name: str, code: CodebookCode) -> str:
        book = self.tensor(f"{name}.book", FloatWeight(code.codebook.astype(np.float16)))
        shared = self.node("Gather", [book, self._codes(name, code.q, code.bits, TensorProto.INT64)],
                           None if code.per_channel else name)
        if not code.per_channel:
            return shared
        scale = self.tensor(f"{name}.scale", FloatWeight(code.channel_scale().astype(np.float16)))
        return self.node("Mul", [shared, scale], name)

    def _codes(self, name: str, q: np.ndarray, bits: int, dtype: int) -> str:
        """The codes ``q`` as a tensor of ``dtype`` and q's shape, taken from the file's ``bits``-wide
        code stream (written by `finish`)."""
        flat = self.temp()
        self.streams.setdefault((bits, dtype), []).append((flat, q))
        return self.node("Reshape", [flat, self.shape(q.shape)])

    def finish(self) -> list:
        """The nodes in order: each code stream's unpacking first, then the network."""
        for (bits, dtype), tensors in sorted(self.streams.items()):
            codes = self._unpacked(bits, np.concatenate([q.reshape(-1) for _, q in tensors]), dtype)
            sizes = self.const(f"{code_stream_name(bits)}.{dtype}.sizes", np.array([q.size for _, q in tensors], np.int64))
            self.prelude.append(helper.make_node("Split", [codes, sizes], [flat for flat, _ in tensors], axis=0))
        return self.prelude + self.nodes

    def _unpacked(self, bits: int, codes: np.ndarray, dtype: int) -> str:
        """Decode nodes (into ``self.prelude``) giving the flat ``codes`` as ``dtype``."""
        name = code_stream_name(bits)
        stored = self.shared_const(name, pack_codes(codes, bits))

        def add(op, inputs, **attrs):
            return self.node(op, inputs, prelude=True, **attrs)

        if bits < 8:
            column = add("Unsqueeze", [stored, self.shared_const("axis1", np.array([1], np.int64))])
            planes = add("Mod", [add("BitShift", [column, self.shared_const("shifts", np.arange(8, dtype=np.uint8))],
                                     direction="RIGHT"), self.shared_const("two", np.array(2, np.uint8))])
            flat = add("Reshape", [planes, self.shared_const("flat", np.array([-1], np.int64))])
            count = self.const(f"{name}.bits", np.array([codes.size * bits], np.int64))
            kept = add("Slice", [flat, self.shared_const("zero", np.array([0], np.int64)), count])
            rows = add("Reshape", [kept, self.const(f"{name}.rows", np.array([-1, bits], np.int64))])
            powers = self.shared_const(f"powers{bits}", (2.0 ** np.arange(bits)).astype(np.float32))
            stored = add("MatMul", [add("Cast", [rows], to=TensorProto.FLOAT), powers])
            if dtype == TensorProto.FLOAT:
                return stored
        return add("Cast", [stored], to=dtype)

    def shape(self, dims: tuple[int, ...]) -> str:
        """A shape constant, one per distinct shape (``256x256x1x1``)."""
        return self.shared_const("x".join(map(str, dims)), np.array(dims, np.int64))

    def shared_const(self, name: str, array: np.ndarray) -> str:
        """A constant added once however many tensors use it."""
        if name not in self.shared:
            self.shared.add(self.const(name, array))
        return name

    def temp(self) -> str:
        """A short name for an intermediate of weight decoding (names cost bytes in every reference)."""
        self.temps += 1
        return f"_{self.temps}"


def apply_weight_formats(model: onnx.ModelProto, layers: list[FoldedLayer], encodings: dict, bias_dtype) -> None:
    """Store each layer's weight as ``encodings[layer.name]`` says and its bias as ``bias_dtype``: the
    initializers holding them are replaced by decode nodes (first in the graph) whose outputs the
    layers read instead."""
    graph, builder, decoded = model.graph, _GraphBuilder(), {}
    stored = {t.name: t for t in graph.initializer}
    for layer in layers:
        parts = (("w", layer.weight, encodings[layer.name]), ("b", layer.bias, FloatWeight(layer.bias.astype(bias_dtype))))
        for (part, array, encoding), torch_name in zip(parts, (f"{layer.name}.weight", f"{layer.name}.bias")):
            name, transposed = _initializer_of(stored, torch_name, array)
            if name not in decoded:  # torch shares one initializer between identical tensors (zero biases)
                decoded[name] = builder.tensor(f"{layer.name}.{part}", encoding)
                if transposed:  # a Linear on 3-D inputs: MatMul with the weight's transpose
                    decoded[name] = builder.node("Transpose", [decoded[name]])
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = decoded.get(name, name)
    nodes = builder.finish() + list(graph.node)
    kept = [t for t in graph.initializer if t.name not in decoded]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + builder.initializers)


def _initializer_of(stored: dict, name: str, array: np.ndarray) -> tuple[str, bool]:
    """The initializer holding ``array`` (the one torch named ``name``, else one with the same values)
    and whether it holds its transpose."""
    if name in stored and np.array_equal(numpy_helper.to_array(stored[name]), array):
        return name, False
    for transposed, values in ((False, array), (True, array.T if array.ndim == 2 else None)):
        for tensor in stored.values():
            if values is not None and tuple(tensor.dims) == values.shape \
                    and np.array_equal(numpy_helper.to_array(tensor), values):
                return tensor.name, transposed
    raise GraphError(f"{name}: no initializer of the exported ONNX graph holds it (shape {array.shape}), so its "
                     "weight format cannot be applied; this architecture computes it from other tensors")


def tidy(model: onnx.ModelProto) -> None:
    """Drop what torch.onnx.export adds that costs bytes and says nothing: Constant nodes become
    initializers (one per distinct value, short names), Identity nodes of an initializer are read
    through, names and doc strings of nodes go, attributes at their default values go."""
    graph = model.graph
    stored, constants, alias, kept = {t.name for t in graph.initializer}, {}, {}, []
    fresh = (name for name in (f"k{i}" for i in itertools.count()) if name not in stored)
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            value = numpy_helper.to_array(node.attribute[0].t)
            key = (value.dtype.str, value.shape, value.tobytes())
            if key not in constants:
                constants[key] = next(fresh)
                graph.initializer.append(numpy_helper.from_array(value, constants[key]))
            alias[node.output[0]] = constants[key]
        elif node.op_type == "Identity" and node.input[0] in stored:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for node in kept:
        node.input[:] = [alias.get(name, name) for name in node.input]
        node.ClearField("name")  # proto2: an empty string set is still stored
        node.ClearField("doc_string")
        _strip_defaults(node)
    del graph.node[:], graph.value_info[:]
    graph.node.extend(kept)
    graph.name, model.producer_name = "edge", "edge"
    for message, field_name in ((graph, "doc_string"), (model, "doc_string"), (model, "producer_version")):
        message.ClearField(field_name)


def _strip_defaults(node: onnx.NodeProto) -> None:
    """Remove the attributes that say what their absence says (a Conv's kernel_shape: its weight's)."""
    if node.domain not in ("", "ai.onnx"):
        return
    schema = onnx.defs.get_schema(node.op_type, OPSET, node.domain)
    for attr in list(node.attribute):
        value = helper.get_attribute_value(attr)
        default = schema.attributes[attr.name].default_value if attr.name in schema.attributes else None
        if (default is not None and default.type and value == helper.get_attribute_value(default)) \
                or (attr.name in _ALL_EQUAL and isinstance(value, list) and set(value) == {_ALL_EQUAL[attr.name]}) \
                or (node.op_type == "Conv" and attr.name == "kernel_shape"):
            node.attribute.remove(attr)


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """`tidy` ``model``, give intermediate values short names (`_short_intermediates`), drop unused
    initializers; -> ``model``."""
    tidy(model)
    graph = model.graph
    _short_intermediates(graph.node, {t.name for t in graph.initializer})
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return digits[n] if n < 36 else _base36(n // 36) + digits[n % 36]


def _short_intermediates(nodes: list, taken: set[str]) -> list:
    """``nodes`` with every intermediate value renamed to a short base-36 name (``1``, ``2``, .. ``1a``):
    each name is stored once where it is made and once per use, ~2 KB of a 140 KB file."""
    names = {}
    fresh = (name for name in map(_base36, itertools.count(1)) if name not in taken)
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = names.get(name, name)
        for i, output in enumerate(node.output):
            if output != OUTPUT_NAME:
                names[output] = node.output[i] = next(fresh)
    return nodes


def _checkpoint_name(stored: str) -> str:
    """The checkpoint's name of a stored tensor (``cnn.1.3.w.h`` -> ``cnn.1.3.weight``)."""
    parts = stored.split(".")
    for i, part in enumerate(parts):
        if part in ("w", "b"):
            return ".".join(parts[:i] + ["weight" if part == "w" else "bias"])
    return stored


def write_checked(model: onnx.ModelProto, path, entropy: bool = False) -> int:
    """Run the full onnx.checker, then write ``model`` (its code streams entropy-coded with ``entropy``,
    `edge.codec.entropy`) atomically to ``path``; -> its size in bytes."""
    onnx.checker.check_model(model, full_check=True)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CheckpointError(f"{path}: not written: stored weight {_checkpoint_name(tensor.name)} would be "
                                  f"non-finite ({values.dtype}; weights beyond its range?): choose a wider --quant")
    data = seal((entropy_code(model) if entropy else model).SerializeToString())  # edge.crc32 of the whole file
    atomic_write(path, lambda f: f.write(data))
    return len(data)
