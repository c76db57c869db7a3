"""edge.workflows.compress_views (the augmented-views validation signal) and quantization-aware fine-tuning of a
slimmed model against the unslimmed one (`edge.export.quantize.Matching`), on tiny seeded StudentNets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from edge.core.config import StudentConfig
from edge.models.student import build_student
from synthetic import trained_like

CONFIG = StudentConfig(widths=(8, 16, 48, 48, 48), pools=(0, 1), input_size=16, num_classes=3)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((count, 3, 16, 16), dtype=np.float32))


def _numpy_logits(model):
    def logits_of(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x).numpy()
    return logits_of


def test_the_views_signal_is_zero_for_the_model_and_repeats_exactly_for_another():
    from edge.workflows.compress_views import ViewSignal

    model, other = build_student(CONFIG, trained_like(CONFIG)), build_student(CONFIG, trained_like(CONFIG, seed=1))
    signal = ViewSignal.of(model, _images(12, 0), views=4)
    assert signal.reference.shape == (4, 12, 3)
    same = signal.score(_numpy_logits(model))
    assert same["views_kl"] < 1e-9 and same["views_kl_noise"] < 1e-9 and same["views_agreement"] == 1.0
    first, again = signal.score(_numpy_logits(other)), signal.score(_numpy_logits(other))
    assert first == again  # the same views every time: candidates are compared on the same inputs
    assert first["views_kl"] > 0.01 and 0 < first["views_kl_noise"] < first["views_kl"]
    assert not np.allclose(signal.view(0).numpy(), signal.view(1).numpy())  # each view its own draw


def test_slimmed_codes_trained_against_the_unslimmed_model_under_no_grad_move_towards_it():
    """`edge compress` exports under torch.no_grad(): trained quantization must still train (it raised before)."""
    from edge.export.calibrate import set_weights
    from edge.export.finetune import matching_inputs
    from edge.export.mixed_precision import kl_from
    from edge.export.quantize import Matching, QuantSpec, encode_model
    from edge.models.fold import fold_model
    from edge.models.merge import merge_classifier
    from edge.prune.reconstruct import prune_reconstruct, target_widths

    rng = np.random.default_rng(4)  # large random weights: answers that differ between images, that codes can spoil
    state = {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) if k.endswith("weight") and v.ndim > 1 else v
             for k, v in trained_like(CONFIG).items()}
    teacher = build_student(CONFIG, state)
    merged, merged_state = merge_classifier(CONFIG, state)
    images = _images(48, 2)
    views = matching_inputs(images, torch.Generator().manual_seed(5))
    slim = build_student(*prune_reconstruct(merged, merged_state, target_widths(merged, 0.5), images))
    spec = QuantSpec("uint3", per_channel=True, fp16_below=0)
    with torch.no_grad():
        layers, rounded = encode_model(fold_model(slim), spec, images.numpy(), progress=False)
        trained_layers, trained = encode_model(fold_model(slim), replace(spec, train_epochs=6), images.numpy(),
                                               progress=False,
                                               matching=Matching(teacher, images.numpy(), lr=0.1, about="the model"))
    rounded_model, trained_model = fold_model(slim), fold_model(slim)
    with torch.no_grad():
        for model, held in ((rounded_model, layers), (trained_model, trained_layers)):
            for layer in held:
                set_weights(model, layer.name, layer.weight, layer.bias)

    def error(model) -> float:  # what the training lowers: the KL from the teacher's answers on matching views
        with torch.no_grad():
            return kl_from(teacher(views).numpy(), model(views).numpy())

    assert any((trained[n].q != rounded[n].q).any() for n in trained)  # the codes moved
    assert error(trained_model) < error(rounded_model)
