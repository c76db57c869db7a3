"""The DeepInversion study's maths (studies/synthetic_inputs.py) on a tiny StudentNet: synthesis moves a batch's
BatchNorm statistics towards the model's own and its answers towards the targets; added images keep their pixels
through function matching's crop; images are kept and reused."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edge.core.config import StudentConfig
from edge.models.student import build_student
from synthetic import trained_like

TINY = StudentConfig(widths=(8, 16, 16), pools=(0,), input_size=16, num_classes=4)


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """Images of a known kind: random 4 x 4 colour fields, upsampled."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)


def tiny_model() -> torch.nn.Module:
    """A tiny StudentNet whose BatchNorm statistics are those of `smooth_images` (as a trained model's are of its
    training photos)."""
    model = build_student(TINY, trained_like(TINY, seed=3))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        model(smooth_images(256, seed=9))
    return model.eval()


def statistics_loss(model, images: torch.Tensor) -> float:
    from studies.synthetic_inputs import FIRST_BN_WEIGHT, batchnorm_losses

    losses, handles = batchnorm_losses(model)
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return float(FIRST_BN_WEIGHT * losses[0] + sum(losses[1:]))


def test_synthesis_matches_the_batchnorm_statistics_and_the_targets():
    from studies.synthetic_inputs import FROM_NOISE, deep_inversion

    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    start = (0.5 + 0.2 * torch.randn(8, 3, 16, 16, generator=generator)).clamp(0, 1)
    targets = torch.arange(8) % 4
    how = dataclasses.replace(FROM_NOISE, iterations=60, lr=0.05, jitter=2)
    made = deep_inversion(model, start, targets, how, generator)
    assert made.dtype == torch.uint8 and made.shape == start.shape
    images = made.float() / 255
    assert statistics_loss(model, images) < 0.5 * statistics_loss(model, start)
    assert statistics_loss(model, images) < 3 * statistics_loss(model, smooth_images(8, seed=4))
    with torch.no_grad():
        after, before = (torch.nn.functional.cross_entropy(model(x), targets) for x in (images, start))
    assert after < before


def test_synthesised_images_are_kept_and_reused(tmp_path):
    from studies.synthetic_inputs import FROM_PHOTOS, synthesise

    model = tiny_model()
    photos = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    how = dataclasses.replace(FROM_PHOTOS, iterations=2)
    path = tmp_path / "made.npy"
    made = synthesise(model, 40, 16, 4, how, 7, photos, path)
    assert made.shape == (40, 3, 16, 16) and np.array_equal(np.load(path), made.numpy())
    np.save(path, made[:32].numpy())  # as if stopped after the first batch
    assert torch.equal(synthesise(model, 40, 16, 4, how, 7, photos, path), made)


def test_added_images_keep_their_pixels_through_the_random_crop():
    from edge.data.datasets import Augment, ImageSet, augment_batch
    from edge.core.config import Preprocess
    from studies.synthetic_inputs import with_images

    aug = Augment(16, max_angle=0.0, flip=False)
    size = aug.canvas
    train = ImageSet(pixels=torch.zeros(2, 3, size, size, dtype=torch.uint8), labels=torch.tensor([0, 1]),
                     ids=["a", "b"], classes=None, preprocess=Preprocess(crop=16),
                     boxes=torch.tensor([[0, 0, size, size]] * 2))
    extra = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    both = with_images(train, extra)
    assert len(both) == 5 and (both.labels[2:] == -1).all()
    for seed in range(3):
        crops = augment_batch(both.pixels[2:], both.boxes[2:], aug, torch.Generator().manual_seed(seed))
        assert torch.equal(crops, extra.float())
