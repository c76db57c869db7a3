"""edge.inference.shipped: the shipped student rebuilt as a checkpoint computes what its ONNX file computes, and
`edge export` without a model exports it (the README's quick start, on any clone)."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from edge.cli import main
from edge.models.student import build_student
from edge.inference.runtime import OnnxClassifier
from edge.inference.shipped import SHIPPED_STUDENT, shipped_student


def _inputs(size: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)


def test_the_rebuilt_shipped_student_computes_what_its_file_computes():
    checkpoint = shipped_student()
    assert checkpoint.parameters == 256_779 and checkpoint.card.classes == OnnxClassifier(SHIPPED_STUDENT).card.classes
    x = _inputs(checkpoint.card.config.input_size)
    with torch.no_grad():
        rebuilt = build_student(checkpoint.card.config, checkpoint.state)(torch.from_numpy(x)).numpy()
    shipped = OnnxClassifier(SHIPPED_STUDENT)(x)
    assert np.abs(rebuilt - shipped).max() < 1e-4 * np.abs(shipped).max()


def test_export_without_a_model_exports_the_shipped_student(tmp_path):
    out = tmp_path / "student_fp16.onnx"
    result = CliRunner().invoke(main, ["export", "--quant", "fp16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "the shipped student" in result.output and "256,779 parameters" in result.output
    x = _inputs(OnnxClassifier(out).card.config.input_size)
    shipped, exported = OnnxClassifier(SHIPPED_STUDENT)(x), OnnxClassifier(out)(x)
    assert (shipped.argmax(1) == exported.argmax(1)).all()
    assert np.abs(shipped - exported).max() < 1e-2 * np.abs(shipped).max()  # fp16 weights
