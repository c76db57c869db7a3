"""The shipped student as a checkpoint: what `edge export` (and the README's quick start) works on
when no model is given, on any clone, with no dataset and no homework file.

`models/food11_student_uint8.onnx` is the homework TA's StudentNet as edge ships it (uint8, 98.99%
top-1 agreement with the fp32 `.bin` on the 497 real photos). ONNX Runtime decodes its weights
(`edge.inference.onnx_torch.decoded_graph`); the folded convs and the classifier, in the order the graph runs
them, become a StudentNet of the file's own config whose BatchNorms are the identity, so the
checkpoint computes what the file computes. edge never writes in models/ (`edge.core.files.SHIPPED_MODELS`),
and the file is checked against the sha256 it shipped with before every rebuild, so a file replaced
by hand is named as such instead of failing on a shape or exporting some other model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.io.checkpoints import Checkpoint
from edge.core.errors import CheckpointError
from edge.core.files import SHIPPED_MODELS, not_as_shipped
from edge.core.files import SHIPPED_SHA256 as SHIPPED_DIGESTS
from edge.models.fold import BN_EPS

SHIPPED_STUDENT = SHIPPED_MODELS / "food11_student_uint8.onnx"
SHIPPED_SHA256 = SHIPPED_DIGESTS[SHIPPED_STUDENT.name]  # its bytes as shipped


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


def check_shipped(path: Path, sha256: str) -> None:
    """`CheckpointError` unless ``path`` holds the bytes whose sha256 is ``sha256`` (the file as shipped)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: the shipped student is missing (edge installed without its models/ "
                              "folder): give a CHECKPOINT")
    changed = not_as_shipped(path, sha256)
    if changed:
        raise CheckpointError(f"{path}: {changed}: it was replaced by hand; restore it (git checkout -- "
                              f"models/{path.name}) or give a CHECKPOINT")


def shipped_student() -> Checkpoint:
    """The shipped student (`SHIPPED_STUDENT`, checked against `SHIPPED_SHA256`) as a checkpoint."""
    check_shipped(SHIPPED_STUDENT, SHIPPED_SHA256)
    return student_from_onnx(SHIPPED_STUDENT)
