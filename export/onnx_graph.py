"""Build the ONNX graph of a folded StudentNet from per-tensor weight encodings.

Encodings (the computation is always fp32):
- `FloatWeight` fp32: a float initializer; fp16: a float16 initializer + Cast to float.
- `MinMaxCode` (uintN, N <= 8): uint8 codes + their min and max (per tensor or per output
  channel) and the level count, decoded as ``min + q * (max - min) / levels`` by
  ``Cast -> Sub -> Div -> Mul -> Add``. Every input of those nodes is a constant, so ONNX
  Runtime's constant folding turns them back into float weights when the session is created:
  no dequantization is left at run time (`export.exporter.leftover_dequantization` checks it).
Nodes are unnamed and intermediate names short: in a 260 KB file, names are a visible cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.checkpoints import CheckpointError
from edge.config import ModelCard
from edge.files import atomic_write
from edge.fold import FoldedLayer
from edge.metadata import write_metadata
from edge.quant import PACKABLE_BITS, FloatWeight, MinMaxCode, pack_codes

OPSET = 17
IR_VERSION = 8
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass
class _GraphBuilder:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    shared: set = field(default_factory=set)
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
        array = encoding.array
        if array.dtype == np.float32:
            return self.const(name, array)
        return self.node("Cast", [self.const(f"{name}.{array.dtype.name}", array)], name, to=TensorProto.FLOAT)

    def _minmax(self, name: str, code: MinMaxCode) -> str:
        q = self._codes(name, code)
        lo = self.const(f"{name}.min", code.lo.astype(np.float32))
        hi = self.const(f"{name}.max", code.hi.astype(np.float32))
        levels = self.shared_const(f"levels{code.bits}", np.array(code.levels, np.float32))
        step = self.node("Div", [self.node("Sub", [hi, lo], self.temp()), levels], self.temp())
        scaled = self.node("Mul", [self.node("Cast", [q], self.temp(), to=TensorProto.FLOAT), step], self.temp())
        return self.node("Add", [scaled, lo], name)

    def _codes(self, name: str, code: MinMaxCode) -> str:
        """uint8 codes; 1-, 2- and 4-bit codes packed several to a byte and unpacked by
        ``BitShift -> Mod -> Reshape -> Slice -> Reshape`` (constant-folded like the rest)."""
        if code.bits not in PACKABLE_BITS:
            return self.const(f"{name}.q", code.q)
        per_byte = 8 // code.bits
        packed = self.const(f"{name}.q{code.bits}", pack_codes(code.q, code.bits))
        shifts = self.shared_const(f"shifts{code.bits}", (np.arange(per_byte, dtype=np.uint8) * code.bits)[None])
        base = self.shared_const(f"base{code.bits}", np.array(1 << code.bits, np.uint8))
        column = self.node("Unsqueeze", [packed, self.shared_const("axis1", np.array([1], np.int64))], self.temp())
        digits = self.node("Mod", [self.node("BitShift", [column, shifts], self.temp(), direction="RIGHT"), base],
                           self.temp())
        flat = self.node("Reshape", [digits, self.shared_const("flat", np.array([-1], np.int64))], self.temp())
        count = self.const(f"{name}.n", np.array([code.q.size], np.int64))
        kept = self.node("Slice", [flat, self.shared_const("zero", np.array([0], np.int64)), count], self.temp())
        return self.node("Reshape", [kept, self.const(f"{name}.shape", np.array(code.q.shape, np.int64))],
                         self.temp())

    def shared_const(self, name: str, array: np.ndarray) -> str:
        """A constant added once however many tensors use it."""
        if name not in self.shared:
            self.shared.add(self.const(name, array))
        return name

    def temp(self) -> str:
        """A short name for an intermediate of weight decoding (names cost bytes in every reference)."""
        self.temps += 1
        return f"_{self.temps}"

    def layer(self, layer: FoldedLayer, encoding, bias_encoding, x: str, clip: tuple[str, str]) -> str:
        w = self.tensor(f"{layer.name}.weight", encoding)
        b = self.tensor(f"{layer.name}.bias", bias_encoding)
        if layer.kind == "fc":
            pooled = self.node("GlobalAveragePool", [x], "pooled")
            return self.node("Gemm", [self.node("Flatten", [pooled], "features", axis=1), w, b], OUTPUT_NAME, transB=1)
        k = layer.weight.shape[-1]
        y = self.node("Conv", [x, w, b], f"{layer.name}.y", group=layer.groups, kernel_shape=[k, k], pads=[k // 2] * 4)
        if layer.relu6:
            y = self.node("Clip", [y, *clip], f"{layer.name}.a")
        if layer.pool_after:
            y = self.node("MaxPool", [y], f"{layer.name}.p", kernel_shape=[2, 2], strides=[2, 2])
        return y


def build_onnx(card: ModelCard, layers: list[FoldedLayer], encodings: dict, bias_dtype, quant: dict) -> onnx.ModelProto:
    """The ONNX model of ``layers`` with weights stored as ``encodings`` say (by layer name), biases
    as ``bias_dtype``, and ``card`` + ``quant`` in its metadata."""
    builder = _GraphBuilder()
    clip = (builder.const("relu6.min", np.array(0.0, np.float32)), builder.const("relu6.max", np.array(6.0, np.float32)))
    x = INPUT_NAME
    for layer in layers:
        x = builder.layer(layer, encodings[layer.name], FloatWeight(layer.bias.astype(bias_dtype)), x, clip)
    size, channels = card.config.input_size, card.config.in_channels
    graph = helper.make_graph(
        builder.nodes, "student",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", card.config.num_classes])],
        builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge")
    model.ir_version = IR_VERSION
    write_metadata(model, card, quant)
    return model


def write_checked(model: onnx.ModelProto, path) -> int:
    """Run the full onnx.checker and check every stored weight is finite (a weight beyond fp16's
    range becomes inf), then write ``model`` atomically to ``path``; -> its size in bytes."""
    onnx.checker.check_model(model, full_check=True)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CheckpointError(f"{path}: not written: stored weight {tensor.name} would be non-finite "
                                  f"({values.dtype}; weights beyond its range?): choose a wider --quant")
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return len(data)
