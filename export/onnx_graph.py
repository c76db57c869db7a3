"""Build the ONNX graph of a folded StudentNet, with its weights stored as asked.

Storage schemes (the computation is always fp32):
- ``fp32``: float initializers.
- ``fp16``: float16 initializers, Cast to float.
- ``uint8`` (or any ``uintN`` up to 8 bits): integer codes + their min and max (per tensor,
  or per output channel), decoded by ``Cast -> Mul(step) -> Add(min)`` where ``step =
  (max - min) / (2**N - 1)``. Every input of those nodes is a constant, so ONNX Runtime's
  constant folding turns them back into float weights when the session is created: no
  dequantization is left at run time (`edge.runtime` proves it on each file we test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.config import ModelCard
from edge.fold import FoldedLayer
from edge.metadata import quant_metadata, write_metadata
from edge.quant import minmax_encode

OPSET = 17
IR_VERSION = 8
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass(frozen=True)
class Storage:
    """How weights are stored in the file."""

    scheme: str = "fp32"  # fp32 | fp16 | uint<N>
    per_channel: bool = False
    quantize_bias: bool = False

    @property
    def bits(self) -> int | None:
        return int(self.scheme[4:]) if self.scheme.startswith("uint") else None

    @classmethod
    def parse(cls, scheme: str, per_channel: bool = False) -> "Storage":
        if scheme not in ("fp32", "fp16") and not (scheme.startswith("uint") and scheme[4:].isdigit()
                                                    and 1 <= int(scheme[4:]) <= 8):
            raise ValueError(f"unknown weight format {scheme!r}: use fp32, fp16 or uint8 (uint1..uint8)")
        return cls(scheme, per_channel)


@dataclass
class _GraphBuilder:
    storage: Storage
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def weight(self, name: str, array: np.ndarray, is_bias: bool = False) -> str:
        """Store ``array`` as the scheme says; return the name of its float32 value in the graph."""
        scheme = self.storage.scheme
        if scheme == "fp32" or (is_bias and self.storage.bits):
            return self.const(name, array.astype(np.float32))
        if scheme == "fp16":
            return self.node("Cast", [self.const(f"{name}_fp16", array.astype(np.float16))], name,
                             to=TensorProto.FLOAT)
        code = minmax_encode(array, self.storage.bits, per_channel=self.storage.per_channel and not is_bias)
        q = self.const(f"{name}_q", code.q)
        lo = self.const(f"{name}_min", code.lo.astype(np.float32))
        hi = self.const(f"{name}_max", code.hi.astype(np.float32))
        levels = self.const(f"{name}_levels", np.array(code.levels, np.float32))
        step = self.node("Div", [self.node("Sub", [hi, lo], f"{name}_span"), levels], f"{name}_step")
        scaled = self.node("Mul", [self.node("Cast", [q], f"{name}_qf", to=TensorProto.FLOAT), step],
                           f"{name}_scaled")
        return self.node("Add", [scaled, lo], name)

    def layer(self, layer: FoldedLayer, x: str, clip: tuple[str, str]) -> str:
        w = self.weight(f"{layer.name}.weight", layer.weight)
        b = self.weight(f"{layer.name}.bias", layer.bias, is_bias=True)
        if layer.kind == "fc":
            pooled = self.node("GlobalAveragePool", [x], "pooled")
            flat = self.node("Flatten", [pooled], "features", axis=1)
            return self.node("Gemm", [flat, w, b], OUTPUT_NAME, transB=1)
        k = layer.weight.shape[-1]
        y = self.node("Conv", [x, w, b], f"{layer.name}.out", group=layer.groups,
                      kernel_shape=[k, k], pads=[k // 2] * 4)
        if layer.relu6:
            y = self.node("Clip", [y, *clip], f"{layer.name}.relu6")
        if layer.pool_after:
            y = self.node("MaxPool", [y], f"{layer.name}.pool", kernel_shape=[2, 2], strides=[2, 2])
        return y


def build_onnx(card: ModelCard, layers: list[FoldedLayer], storage: Storage) -> onnx.ModelProto:
    """The ONNX model of ``layers`` with weights stored per ``storage`` and ``card`` in its metadata."""
    builder = _GraphBuilder(storage)
    clip = (builder.const("relu6_min", np.array(0.0, np.float32)), builder.const("relu6_max", np.array(6.0, np.float32)))
    x = INPUT_NAME
    for layer in layers:
        x = builder.layer(layer, x, clip)
    size, channels = card.config.input_size, card.config.in_channels
    graph = helper.make_graph(
        builder.nodes, "student",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", card.config.num_classes])],
        builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge")
    model.ir_version = IR_VERSION
    write_metadata(model, card, quant_metadata(storage.scheme, storage.per_channel))
    return model
