"""StudentNet (and baseline ConvNet) weights -> the inference graph's layers, BatchNorm folded
into the conv before it.

Pure numpy, shared by the ONNX exporter and anything that wants the deployed weights
(quantization studies, size accounting). Layer names follow the homework's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.config import StudentConfig

BN_EPS = 1e-5


@dataclass(frozen=True)
class FoldedLayer:
    """A conv (or the classifier, ``kind == 'fc'``) with its bias, ready for inference."""

    name: str
    kind: str  # "conv" | "fc"
    weight: np.ndarray
    bias: np.ndarray
    groups: int = 1
    relu6: bool = False
    pool_after: bool = False


def _fold_bn(state: dict, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    w = state[f"{conv}.weight"].astype(np.float64)
    b = state[f"{conv}.bias"].astype(np.float64)
    scale = state[f"{bn}.weight"].astype(np.float64) / np.sqrt(state[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    shift = state[f"{bn}.bias"].astype(np.float64) - state[f"{bn}.running_mean"].astype(np.float64) * scale
    return (w * scale[:, None, None, None]).astype(np.float32), (b * scale + shift).astype(np.float32)


def _classifier(state: dict) -> FoldedLayer:
    return FoldedLayer("fc.0", "fc", state["fc.0.weight"].astype(np.float32), state["fc.0.bias"].astype(np.float32))


def fold_student(config: StudentConfig, state: dict[str, np.ndarray]) -> list[FoldedLayer]:
    """Fold each stage's BatchNorm into the conv in front of it; pointwise convs keep their own bias."""
    layers = []
    for stage in range(config.depth):
        pool = stage in config.pools
        w, b = _fold_bn(state, f"cnn.{stage}.0", f"cnn.{stage}.1")
        if stage == 0:
            layers.append(FoldedLayer("cnn.0.0", "conv", w, b, relu6=True, pool_after=pool))
            continue
        layers.append(FoldedLayer(f"cnn.{stage}.0", "conv", w, b, groups=w.shape[0], relu6=True))
        layers.append(FoldedLayer(f"cnn.{stage}.3", "conv", state[f"cnn.{stage}.3.weight"].astype(np.float32),
                                  state[f"cnn.{stage}.3.bias"].astype(np.float32), pool_after=pool))
    layers.append(_classifier(state))
    return layers


def fold_convnet(config: StudentConfig, groups: int, state: dict[str, np.ndarray]) -> list[FoldedLayer]:
    """The same for an `edge.baselines.ConvNet`: every stage is one 3x3 conv (grouped after stage 0)
    with its BatchNorm folded in. Its channel shuffles are not layers: `edge.export.generic` adds them."""
    layers = []
    for stage in range(config.depth):
        w, b = _fold_bn(state, f"cnn.{stage}.0", f"cnn.{stage}.1")
        layers.append(FoldedLayer(f"cnn.{stage}.0", "conv", w, b, groups=groups if stage else 1, relu6=True,
                                  pool_after=stage in config.pools))
    layers.append(_classifier(state))
    return layers
