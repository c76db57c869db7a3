"""The shipped student as a checkpoint: what `edge export` (and the README's quick start) works on
when no model is given, on any clone, with no dataset and no homework file.

`models/food11_student_uint8.onnx` is the homework TA's StudentNet as edge ships it (uint8, 98.99%
top-1 agreement with the fp32 `.bin` on the 497 real photos). ONNX Runtime decodes its weights
(`edge.inference.onnx_torch.decoded_graph`); the folded convs and the classifier, in the order the graph runs
them, become a StudentNet of the file's own config whose BatchNorms are the identity, so the
checkpoint computes what the file computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.io.checkpoints import Checkpoint
from edge.core.errors import CheckpointError
from edge.models.fold import BN_EPS

SHIPPED_STUDENT = Path(__file__).resolve().parents[2] / "models" / "food11_student_uint8.onnx"


def _layer_names(depth: int) -> list[str]:
    """StudentNet's convs and classifier in forward order (`edge.models.student`' module names)."""
    return ["cnn.0.0"] + [f"cnn.{i}.{j}" for i in range(1, depth) for j in (0, 3)] + ["fc.0"]


def student_from_onnx(path: Path) -> Checkpoint:
    """A StudentNet checkpoint computing what the StudentNet ONNX file ``path`` (ours) computes."""
    from onnx import numpy_helper

    from edge.models.student import StudentNet, state_to_numpy
    from edge.inference.onnx_torch import decoded_graph
    from edge.inference.runtime import OnnxClassifier

    card = OnnxClassifier(path).card
    graph = decoded_graph(path).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    state = state_to_numpy(StudentNet(card.config))
    names = _layer_names(card.config.depth)
    if len(layers) != len(names):
        raise CheckpointError(f"{path}: {len(layers)} convs and classifiers, not the {len(names)} of its StudentNet "
                              f"config {card.config.widths}")
    for name, node in zip(names, layers):
        for key, value in zip(("weight", "bias"), node.input[1:3]):
            array = np.array(constants[value], np.float32)
            if array.shape != state[f"{name}.{key}"].shape:
                raise CheckpointError(f"{path}: {name}.{key} has shape {array.shape}, the config needs "
                                      f"{state[f'{name}.{key}'].shape}")
            state[f"{name}.{key}"] = array
    for key in [k for k in state if k.endswith(".running_var")]:  # identity BatchNorms: the convs are folded
        bn = key[:-len(".running_var")]
        state[f"{bn}.weight"], state[f"{bn}.bias"] = np.ones_like(state[key]), np.zeros_like(state[key])
        state[f"{bn}.running_mean"], state[key] = np.zeros_like(state[key]), np.full_like(state[key], 1 - BN_EPS)
    return Checkpoint(card, state, f"rebuilt from {path.name}")


def shipped_student() -> Checkpoint:
    """The shipped student (`SHIPPED_STUDENT`) as a checkpoint."""
    if not SHIPPED_STUDENT.is_file():
        raise CheckpointError(f"{SHIPPED_STUDENT}: the shipped student is missing (edge installed without its "
                              "models/ folder): give a CHECKPOINT")
    return student_from_onnx(SHIPPED_STUDENT)
