"""Rebuild a torch module from an ONNX file we exported, so gradients can flow through the
weights exactly as ONNX Runtime uses them (white-box attacks on uint8 / uint4 / fp16 exports).

ONNX Runtime's own constant folding decodes the stored weights (uintN codes, fp16 casts, packed
4-bit codes) into float initializers; the folded graph is then run op by op in torch. Only the ops
our exports use are known (Conv, Clip, Relu, HardSwish, HardSigmoid, MaxPool, GlobalAveragePool,
Flatten, Gemm, the shape arithmetic of the baselines' channel shuffle as torch.onnx.export writes it,
plus elementwise arithmetic); anything else (int8 QDQ graphs) is a `ModelError` naming the op.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from edge.inference.runtime import ModelError


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _symmetric_pads(node, attrs: dict) -> list[int]:
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    half = len(pads) // 2
    if pads[:half] != pads[half:] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ModelError(f"{node.op_type} with asymmetric or automatic padding is not supported")
    return pads[:half]


def _conv(node, x, w, b=None):
    a = _attrs(node)
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=_symmetric_pads(node, a),
                    dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _max_pool(node, x):
    a = _attrs(node)
    return F.max_pool2d(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), _symmetric_pads(node, a),
                        ceil_mode=bool(a.get("ceil_mode", 0)))


def _clip(node, x, low=None, high=None):
    return torch.clamp(x, low, high)


def _gemm(node, a_in, b_in, c=None):
    a = _attrs(node)
    a_in = a_in.t() if a.get("transA", 0) else a_in
    b_in = b_in.t() if a.get("transB", 0) else b_in
    y = a.get("alpha", 1.0) * (a_in @ b_in)
    return y if c is None else y + a.get("beta", 1.0) * c


def _gather(node, x, indices):
    axis = _attrs(node).get("axis", 0)
    return x.index_select(axis, indices.reshape(-1)).reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def _unsqueeze(node, x, axes):
    for axis in sorted(axes.tolist()):
        x = x.unsqueeze(axis)
    return x


def _div(node, x, y):
    return x / y if x.is_floating_point() else torch.div(x, y, rounding_mode="trunc")


def _hard_sigmoid(node, x):
    a = _attrs(node)
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)


def _reshape(node, x, shape):
    dims = [x.shape[i] if s == 0 else int(s) for i, s in enumerate(shape.tolist())]
    return x.reshape(dims)


OPS = {
    "Conv": _conv,
    "MaxPool": _max_pool,
    "Clip": _clip,
    "Relu": lambda node, x: F.relu(x),
    "GlobalAveragePool": lambda node, x: x.mean((2, 3), keepdim=True),
    "Flatten": lambda node, x: x.reshape(int(np.prod(x.shape[:_attrs(node).get("axis", 1)])), -1),
    "Gemm": _gemm,
    "Reshape": _reshape,
    "Shape": lambda node, x: torch.tensor(x.shape[_attrs(node).get("start", 0):_attrs(node).get("end")],
                                          dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda node, *xs: torch.cat(xs, _attrs(node)["axis"]),
    "HardSwish": lambda node, x: F.hardswish(x),
    "HardSigmoid": _hard_sigmoid,
    "Transpose": lambda node, x: x.permute(*_attrs(node)["perm"]),
    "Add": lambda node, x, y: x + y,
    "Sub": lambda node, x, y: x - y,
    "Mul": lambda node, x, y: x * y,
    "Div": _div,
}


class OnnxGraphModule(nn.Module):
    """A float ONNX graph (weights already decoded) evaluated with torch ops, differentiable."""

    def __init__(self, model: onnx.ModelProto, origin: str):
        super().__init__()
        unknown = sorted({n.op_type for n in model.graph.node} - set(OPS))
        if unknown:
            raise ModelError(f"{origin}: cannot rebuild ops {', '.join(unknown)} in torch for a white-box attack "
                             "(attack it as a transfer target with --source instead)")
        self.nodes = list(model.graph.node)
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        self.constants: dict[str, torch.Tensor] = {}
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
                if not np.isfinite(array).all():
                    raise ModelError(f"{origin}: weight {tensor.name} has non-finite values")
            self.constants[tensor.name] = torch.from_numpy(np.array(array))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {**self.constants, self.input_name: x}
        for node in self.nodes:
            inputs = [values[name] if name else None for name in node.input]
            values[node.output[0]] = OPS[node.op_type](node, *inputs)
        return values[self.output_name]


def decoded_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """``path`` after ONNX Runtime's basic optimisations: constant folding has turned every stored
    weight encoding into a float initializer; no fusion into runtime-only ops yet."""
    import onnxruntime as ort

    from edge.inference.ort_memory import load_session
    from edge.inference.runtime import session_options

    with tempfile.TemporaryDirectory() as tmp:
        folded = os.path.join(tmp, "decoded.onnx")
        options = session_options(threads=1, optimized_path=folded)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            load_session(str(path), options, ["CPUExecutionProvider"], Path(path).stat().st_size)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from None
        return onnx.load(folded)


def torch_from_onnx(path: str | os.PathLike) -> OnnxGraphModule:
    """The torch module of an ONNX file we exported, weights as ONNX Runtime decodes them, eval mode."""
    module = OnnxGraphModule(decoded_graph(path), str(Path(path)))
    return module.eval()
