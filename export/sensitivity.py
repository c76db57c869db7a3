"""Per-layer sensitivity: which layers lose the most when quantized alone.

Each weight tensor in turn is rounded (the homework's min-max rounding at the asked bit width, or
plain k-means weight sharing with K values, per tensor or per channel) while every other layer stays
fp32; the folded model (`edge.models.fold.fold_model`, any classifier) then runs on real images and the top-1
agreement with fp32 and the largest logit change are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from edge.models.fold import fold_model, model_layers
from edge.codec.quant import minmax_encode
from edge.export.calibrate import BATCH, set_weights
from edge.export.kmeans import plain_codebook


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    weights: int
    agreement: float
    max_logit_change: float


@torch.no_grad()
def logits(model: torch.nn.Module, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """``model``'s outputs for float32 NCHW ``images``, batch by batch."""
    return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))).numpy()
                           for i in range(0, len(images), batch)])


def layer_sensitivity(model: torch.nn.Module, images: np.ndarray, bits: int = 8, per_channel: bool = False,
                      kmeans: int | None = None, progress: bool = True) -> list[LayerSensitivity]:
    """Rows for every conv and linear layer of ``model`` (float, eval), sorted from the most to the
    least sensitive."""
    folded = fold_model(model)
    reference = logits(folded, images)
    rows = []
    for layer in tqdm(model_layers(folded), desc="sensitivity", unit="layer", disable=not progress):
        weight = (plain_codebook(layer.weight, kmeans, per_channel) if kmeans else
                  minmax_encode(layer.weight, bits, per_channel)).decode()
        set_weights(folded, layer.name, weight)
        trial = logits(folded, images)
        set_weights(folded, layer.name, layer.weight)
        rows.append(LayerSensitivity(layer.name, layer.weight.size,
                                     float(np.mean(trial.argmax(1) == reference.argmax(1))),
                                     float(np.abs(trial - reference).max())))
    return sorted(rows, key=lambda r: (r.agreement, -r.max_logit_change))
