"""Build the ONNX graph of a folded StudentNet from per-tensor weight encodings.

Encodings (the computation is always fp32):
- `FloatWeight` fp32: a float initializer; fp16: a float16 initializer + Cast to float.
- `MinMaxCode` (uintN, N <= 8): codes plus the grid's offset (min) and step ((max - min) / levels),
  per tensor (fp32) or per output channel (fp16), decoded as ``offset + q * step`` (Mul -> Add).
- `LowRankWeight` (--low-rank): two float factors and ``MatMul -> Reshape``.
- `CodebookCode` (kmeansK): codes that index an fp16 codebook, decoded by Gather (and a Mul by
  the fp16 scale of each output channel, per channel).
Codes of every width go into one dense bit stream per width (``codes4``: all 4-bit codes of the
file, `edge.quant.pack_codes`), unpacked once by ``BitShift -> Mod`` into bit planes and summed by a
MatMul with the powers of two, then Split into the tensors. Every input of those nodes is a
constant, so ONNX Runtime's constant folding turns them back into float weights when the session
is created: no decoding is left at run time (`edge.export.exporter.leftover_dequantization` checks it).
Nodes are unnamed and intermediate values get short names (`_short_intermediates`): in a 140 KB
file, names are a visible cost. Initializers keep names that say what they hold.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.checkpoints import CheckpointError
from edge.config import ModelCard
from edge.entropy import entropy_code
from edge.files import atomic_write
from edge.fold import FoldedLayer
from edge.metadata import write_metadata
from edge.export.lowrank import LowRankWeight
from edge.quant import CodebookCode, FloatWeight, MinMaxCode, code_stream_name, pack_codes

OPSET = 17
IR_VERSION = 8
INPUT_NAME, OUTPUT_NAME = "image", "logits"
HALF = "h"  # name suffix of float16 initializers (cast to float32 in the graph)


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

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def tensor(self, name: str, encoding) -> str:
        """Store one tensor as encoded; return the name of its float32 value in the graph."""
        if isinstance(encoding, MinMaxCode):
            return self._minmax(name, encoding)
        if isinstance(encoding, CodebookCode):
            return self._codebook(name, encoding)
        if isinstance(encoding, LowRankWeight):
            product = self.node("MatMul", [self.tensor(f"{name}.u", encoding.left), self.tensor(f"{name}.v", encoding.right)],
                                self.temp())
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
        return self.node("Add", [self.node("Mul", [q, step], self.temp()), offset], name)

    def _codebook(self, name: str, code: CodebookCode) -> str:
        book = self.tensor(f"{name}.book", FloatWeight(code.codebook.astype(np.float16)))
        shared = self.node("Gather", [book, self._codes(name, code.q, code.bits, TensorProto.INT64)],
                           self.temp() if code.per_channel else name)
        if not code.per_channel:
            return shared
        scale = self.tensor(f"{name}.scale", FloatWeight(code.channel_scale().astype(np.float16)))
        return self.node("Mul", [shared, scale], name)

    def _codes(self, name: str, q: np.ndarray, bits: int, dtype: int) -> str:
        """The codes ``q`` as a tensor of ``dtype`` and q's shape, taken from the file's ``bits``-wide
        code stream (written by `finish`)."""
        flat = self.temp()
        self.streams.setdefault((bits, dtype), []).append((flat, q))
        return self.node("Reshape", [flat, self.shape(q.shape)], self.temp())

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
            return self._append(self.prelude, op, inputs, **attrs)

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

    def _append(self, nodes: list, op: str, inputs: list[str], **attrs) -> str:
        output = self.temp()
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

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

    def layer(self, layer: FoldedLayer, encoding, bias_encoding, x: str, clip: tuple[str, str] | None,
              pool_after: bool) -> str:
        w = self.tensor(f"{layer.name}.w", encoding)
        b = self.tensor(f"{layer.name}.b", bias_encoding)
        if layer.kind == "fc":
            pooled = self.node("GlobalAveragePool", [x], "pooled")
            return self.node("Gemm", [self.node("Flatten", [pooled], "features", axis=1), w, b], OUTPUT_NAME, transB=1)
        k = layer.weight.shape[-1]  # kernel_shape comes from the weight; defaults (group 1, no pads) are left out
        attrs = ({"group": layer.groups} if layer.groups > 1 else {}) | ({"pads": [k // 2] * 4} if k > 1 else {})
        y = self.node("Conv", [x, w, b], f"{layer.name}.y", **attrs)
        if clip:
            y = self.node("Clip", [y, *clip], f"{layer.name}.a")
        if pool_after:
            y = self.node("MaxPool", [y], f"{layer.name}.p", kernel_shape=[2, 2], strides=[2, 2])
        return y


def build_onnx(card: ModelCard, layers: list[FoldedLayer], encodings: dict, bias_dtype, quant: dict) -> onnx.ModelProto:
    """The ONNX model of ``layers`` with weights stored as ``encodings`` say (by layer name), biases
    as ``bias_dtype``, and ``card`` + ``quant`` in its metadata."""
    builder = _GraphBuilder()
    clip = (builder.const("relu6.min", np.array(0.0, np.float32)), builder.const("relu6.max", np.array(6.0, np.float32)))
    x = INPUT_NAME
    for i, layer in enumerate(layers):  # StudentNet's chain: ReLU6 after cnn.I.0, max-pool after stage I's last conv
        stage = layer.name.split(".")[:2]
        last_of_stage = i + 1 == len(layers) or layers[i + 1].name.split(".")[:2] != stage
        pool_after = layer.kind == "conv" and last_of_stage and int(stage[1]) in card.config.pools
        x = builder.layer(layer, encodings[layer.name], FloatWeight(layer.bias.astype(bias_dtype)), x,
                          clip if layer.kind == "conv" and layer.name.endswith(".0") else None, pool_after)
    size, channels = card.config.input_size, card.config.in_channels
    graph = helper.make_graph(
        _short_intermediates(builder.finish(), {t.name for t in builder.initializers}), "student",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", card.config.num_classes])],
        builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge")
    model.ir_version = IR_VERSION
    write_metadata(model, card, quant)
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
    `edge.entropy`) atomically to ``path``; -> its size in bytes."""
    onnx.checker.check_model(model, full_check=True)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CheckpointError(f"{path}: not written: stored weight {_checkpoint_name(tensor.name)} would be "
                                  f"non-finite ({values.dtype}; weights beyond its range?): choose a wider --quant")
    data = (entropy_code(model) if entropy else model).SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return len(data)
