"""Accuracy-aware export: the smallest weight format whose answers stay within a given drop.

Candidates are tried from the smallest file to the largest; each is exported to a temporary
file and run by ONNX Runtime on a validation folder. A candidate passes when its top-1
agreement with torch fp32 is at least ``100 - max_drop`` % and, with labels, its accuracy is at
most ``max_drop`` points below fp32's. The first that passes is written; the table of all tried
is returned either way (like NNCF's quantize_with_accuracy_control, but for file size).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from edge.io.checkpoints import Checkpoint
from edge.core.files import atomic_write
from edge.export.exporter import export_onnx
from edge.export.quantize import QuantSpec, candidate_specs

CANDIDATES = candidate_specs()  # edge.core.weight_formats.CANDIDATES


@dataclass(frozen=True)
class Trial:
    spec: QuantSpec
    bytes: int
    agreement: float
    accuracy: float | None
    passed: bool

    @property
    def name(self) -> str:
        return self.spec.label


def _predict(path, images: np.ndarray) -> np.ndarray:
    from edge.inference.runtime import OnnxClassifier

    model = OnnxClassifier(path)
    return np.concatenate([model(images[i:i + 32]) for i in range(0, len(images), 32)]).argmax(1)


def select_format(checkpoint: Checkpoint, output: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None,
                  max_drop: float, calibration: np.ndarray | None = None, calibration_source: str = "",
                  candidates=CANDIDATES) -> tuple[Trial | None, list[Trial]]:
    """Write the smallest passing candidate to ``output``; return (chosen or None, all trials)."""
    from edge.inference.torch_backend import TorchClassifier

    reference_model = TorchClassifier(checkpoint)
    reference = np.concatenate([reference_model(images[i:i + 32]) for i in range(0, len(images), 32)]).argmax(1)
    reference_accuracy = None if labels is None else float(np.mean(reference == labels)) * 100
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, spec in enumerate(candidates):
            path = os.path.join(tmp, f"candidate{index}.onnx")
            size, _ = export_onnx(checkpoint, path, spec, calibration, calibration_source)
            predicted = _predict(path, images)
            agreement = float(np.mean(predicted == reference)) * 100
            accuracy = None if labels is None else float(np.mean(predicted == labels)) * 100
            passed = agreement >= 100 - max_drop and (accuracy is None or accuracy >= reference_accuracy - max_drop)
            trials.append(Trial(spec, size, agreement, accuracy, passed))
            if passed:
                data = open(path, "rb").read()
                atomic_write(output, lambda f: f.write(data))
                return trials[-1], trials
    return None, trials
