"""Per-layer sensitivity: which layers lose the most when quantized alone.

Each weight tensor in turn is rounded (the homework's min-max rounding at the asked bit width, or
plain k-means weight sharing with K values, per tensor or per channel) while every other layer stays fp32; the folded model then runs on
real images and the top-1 agreement with fp32 and the largest logit change are recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from edge.checkpoints import Checkpoint
from edge.fold import fold_student
from edge.quant import minmax_encode
from edge.export.calibrate import folded_forward
from edge.export.kmeans import plain_codebook


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    weights: int
    agreement: float
    max_logit_change: float


def layer_sensitivity(checkpoint: Checkpoint, images: np.ndarray, bits: int = 8,
                      per_channel: bool = False, kmeans: int | None = None) -> list[LayerSensitivity]:
    """Rows sorted from the most to the least sensitive layer."""
    layers = fold_student(checkpoint.card.config, checkpoint.state)
    reference = folded_forward(layers, images)
    rows = []
    for index, layer in enumerate(layers):
        weight = (plain_codebook(layer.weight, kmeans, per_channel) if kmeans else
                  minmax_encode(layer.weight, bits, per_channel)).decode()
        trial = [dataclasses.replace(l, weight=weight) if i == index else l for i, l in enumerate(layers)]
        logits = folded_forward(trial, images)
        rows.append(LayerSensitivity(layer.name, layer.weight.size,
                                     float(np.mean(logits.argmax(1) == reference.argmax(1))),
                                     float(np.abs(logits - reference).max())))
    return sorted(rows, key=lambda r: (r.agreement, -r.max_logit_change))
