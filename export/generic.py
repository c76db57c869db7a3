"""Export the architecture baselines (``cnn`` / ``group``, `edge.baselines`) to ONNX.

They go through the StudentNet path where it fits: BatchNorm folded (`edge.fold.fold_model`),
weights encoded by `edge.export.quantize.encode_model` (fp32, fp16, uintN min-max per tensor or per
channel) and the graph built by `edge.export.onnx_graph.build_onnx`. What a StudentNet lacks, the group
baseline's channel shuffles, is added to that graph afterwards (Reshape -> Transpose -> Reshape
after the stage's Clip and MaxPool, which commute with a channel permutation). The baseline's
`NetSpec` travels in the metadata (``edge.net``) next to the card, so `edge predict` and `edge
bench` run the file like an exported StudentNet. Calibrated formats (GPTQ, int8 QDQ) simulate
StudentNet layer by layer and are refused with a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge.baselines import convnet_flops, convnet_parameters
from edge.checkpoints import CheckpointError
from edge.config import ConfigError, ModelCard
from edge.fold import fold_model
from edge.metadata import write_metadata
from edge.nets import NetFile, load_net
from edge.export.onnx_graph import build_onnx, write_checked
from edge.export.quantize import QuantSpec, encode_model

BASELINE_ARCHS = ("cnn", "group")


@dataclass
class BaselineCheckpoint:
    """A baseline's model file, with what `edge export` uses of a `Checkpoint` (card, numpy
    state, source) and ``build()``: its torch module, the parity check's reference."""

    net: NetFile
    source: str = "edge"

    @property
    def card(self) -> ModelCard:
        return self.net.card

    @property
    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.net.state.items()}

    @property
    def parameters(self) -> int:
        return convnet_parameters(self.net.spec.config, self.net.spec.groups)

    def build(self):
        return self.net.build()


def read_baseline(path: str | os.PathLike) -> BaselineCheckpoint | None:
    """The baseline in ``path``; None when the file holds anything else (StudentNets, homework
    files, unreadable files: the checkpoint reader says what is wrong with those)."""
    try:
        net = load_net(path)
    except CheckpointError:
        return None
    return BaselineCheckpoint(net, f"edge {net.spec.arch}") if net.spec.arch in BASELINE_ARCHS else None


def export_baseline(checkpoint: BaselineCheckpoint, path: str | os.PathLike, spec: QuantSpec) -> tuple[int, dict]:
    """Fold, encode, build (shuffles added), fully check and atomically write; -> (bytes, weight format)."""
    net = checkpoint.net.spec
    if spec.calibrated:
        asked = spec.weights if spec.weights == "int8" else f"{spec.weights} --method {spec.method}"
        raise ConfigError(f"--quant {asked} calibrates StudentNet layer by layer; the {net.arch} baseline exports "
                          f"as fp32, fp16 or uint1..uint8 with --method minmax")
    layers, encodings = encode_model(fold_model(checkpoint.build()), spec)
    quant = spec.describe()
    model = build_onnx(checkpoint.card, layers, encodings, np.float32 if spec.weights == "fp32" else np.float16,
                       quant)
    if net.groups > 1:
        add_channel_shuffles(model, net.groups, {i: net.config.widths[i] for i in range(1, net.config.depth)})
    write_metadata(model, checkpoint.card, quant, {**net.to_dict(), "parameters": checkpoint.parameters,
                                                   "flops": convnet_flops(net.config, net.groups)})
    return write_checked(model, path, spec.entropy), quant


def add_channel_shuffles(model: onnx.ModelProto, groups: int, widths: dict[int, int]) -> None:
    """ShuffleNet's channel shuffle, ``x.view(n, g, c/g, h*w).transpose(1, 2).reshape(x.shape)``,
    after the stage of the i-th Conv node (of ``width`` channels) for each ``i: width``."""
    graph = model.graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    for stage, width in widths.items():
        x = _stage_output(graph, convs[stage])
        graph.initializer.extend([numpy_helper.from_array(np.array([0, groups, width // groups, -1], np.int64),
                                                          f"{x}.g")])
        _splice(graph, x, [helper.make_node("Shape", [x], [f"{x}.n"]),
                           helper.make_node("Reshape", [x, f"{x}.g"], [f"{x}.r"]),
                           helper.make_node("Transpose", [f"{x}.r"], [f"{x}.t"], perm=[0, 2, 1, 3]),
                           helper.make_node("Reshape", [f"{x}.t", f"{x}.n"], [f"{x}.s"])])


def _stage_output(graph: onnx.GraphProto, conv: onnx.NodeProto) -> str:
    """A Conv's output after the Clip and MaxPool that follow it."""
    out = conv.output[0]
    while True:
        users = [node for node in graph.node if out in node.input]
        if len(users) != 1 or users[0].op_type not in ("Clip", "MaxPool"):
            return out
        out = users[0].output[0]


def _splice(graph: onnx.GraphProto, tensor: str, nodes: list) -> None:
    """Put ``nodes`` right after ``tensor``'s producer; whatever read ``tensor`` reads their output."""
    out = nodes[-1].output[0]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == tensor:
                node.input[k] = out
    old = list(graph.node)
    at = next(i for i, node in enumerate(old) if tensor in node.output) + 1
    del graph.node[:]
    graph.node.extend(old[:at] + nodes + old[at:])
