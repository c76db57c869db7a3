"""A model file rank 0 wrote, loaded on every rank of a ``torchrun`` run (or plainly without one): kept
apart from `edge.train.distributed`, which reads no model files, so the process group sits below the readers."""

from __future__ import annotations

import os

from edge.core.errors import CheckpointError
from edge.io.checkpoints import load_net
from edge.train.distributed import group


def load_shared(path: str | os.PathLike):
    """`edge.io.checkpoints.load_net` of a file rank 0 wrote (or reads), on every rank."""
    g = group()
    if not g.active:
        return load_net(path)
    data = g.file_bytes(path)
    if data is None:
        raise CheckpointError(f"{path}: no such file (on rank 0)")
    return load_net(path, data)
