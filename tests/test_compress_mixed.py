"""edge.export.mixed_precision on a tiny seeded StudentNet: sensitivities measured, the greedy allocation keeps
to its byte budget and buys fidelity, and the exported mixed-precision file stays within it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.io.checkpoints import Checkpoint
from edge.core.config import ModelCard, Preprocess, StudentConfig, default_classes
from edge.export.mixed_precision import STREAM_BYTES, Upgrade, allocate, kl_from, layer_sensitivity
from edge.models.student import build_student
from synthetic import trained_like

CONFIG = StudentConfig(widths=(8, 16, 48, 48, 48), pools=(0, 1), input_size=16, num_classes=3)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, 16, 16), dtype=np.float32)


def test_allocation_spends_the_budget_on_the_best_kl_drop_per_byte():
    rows = [Upgrade("a", 800, 4, 0.10), Upgrade("a", 800, 5, 0.04), Upgrade("a", 800, 8, 0.03),
            Upgrade("b", 8000, 4, 0.20), Upgrade("b", 8000, 5, 0.15), Upgrade("b", 8000, 8, 0.0),
            Upgrade("c", 100, 4, 0.01), Upgrade("c", 100, 5, 0.01), Upgrade("c", 100, 8, 0.01)]
    assert allocate(rows, 4, 99) == {}  # no upgrade costs less than 100 bytes
    assert allocate(rows, 4, 100) == {"a": 5}  # 0.06 KL for 100 B: the best rate
    # 1,000 B more: b at 5 bits (0.05 for 1,000 B) rates higher than a at 8 bits (0.01 for 300 B) ...
    assert allocate(rows, 4, 1100) == {"a": 5, "b": 5}
    assert allocate(rows, 4, 1400) == {"a": 8, "b": 5}  # ... which the next 300 B buy
    assert allocate(rows, 4, 10**6) == {"a": 8, "b": 8}  # c never gains: never raised
    assert allocate(rows, 4, 1100, stream_bytes=500) == {"a": 5}  # b's 5-bit codes are in the stream a opened
    assert allocate(rows, 4, 1100 + 500, stream_bytes=500) == {"a": 5, "b": 5}
    for budget in (100, 450, 1100, 5000, 20000):
        chosen = allocate(rows, 4, budget)
        spent = sum(next(r.weights for r in rows if r.name == n) * (b - 4) / 8 for n, b in chosen.items())
        assert spent <= budget


def test_more_bits_bring_each_layer_closer_to_the_float_model():
    model = build_student(CONFIG, trained_like(CONFIG))
    rows = layer_sensitivity(model, _images(16, 0), (4, 8), min_weights=100, progress=False)
    by_layer = {}
    for row in rows:
        by_layer.setdefault(row.name, {})[row.bits] = row.kl
    assert len(by_layer) >= 5 and all(row.weights >= 100 for row in rows)
    assert all(kl[8] < kl[4] for kl in by_layer.values())
    assert kl_from(np.eye(3), np.eye(3)) == 0.0


def test_mixed_precision_file_meets_its_byte_budget_and_lowers_the_kl(tmp_path):
    from edge.export.exporter import export_onnx
    from edge.export.quantize import QuantSpec
    from edge.inference.runtime import OnnxClassifier

    state = trained_like(CONFIG)
    card = ModelCard(CONFIG, Preprocess(crop=16), default_classes(3))
    calibration, held_out = _images(32, 1), _images(64, 2)
    spec = QuantSpec("uint4", per_channel=True, fp16_below=100)
    rows = layer_sensitivity(build_student(CONFIG, state), calibration, (4, 5, 6, 8), spec.fp16_below, progress=False)
    budget = 1500
    layer_bits = allocate(rows, 4, budget, STREAM_BYTES)
    assert layer_bits and max(layer_bits.values()) > 4
    base, _ = export_onnx(Checkpoint(card, state, "edge"), tmp_path / "base.onnx", spec, calibration)
    mixed, quant = export_onnx(Checkpoint(card, state, "edge"), tmp_path / "mixed.onnx", spec, calibration, "",
                               layer_bits)
    assert quant["layer_bits"] == layer_bits
    assert base < mixed <= base + 1.1 * budget  # the codes' bytes and their unpacking nodes, as estimated
    with torch.no_grad():
        reference = build_student(CONFIG, state)(torch.from_numpy(held_out)).numpy()
    kl = {name: kl_from(reference, OnnxClassifier(tmp_path / f"{name}.onnx")(held_out)) for name in ("base", "mixed")}
    assert kl["mixed"] < kl["base"]
