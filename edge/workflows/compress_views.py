"""A validation signal for `edge compress` that separates candidates a few dozen photos cannot: the KL
divergence from the model's answers, and top-1 agreement, over many augmented views of each validation
photo (flip, rotation, rescale, shift: `edge.export.finetune.augmented_views`, drawn from a fixed seed so
every candidate sees the same views), with its noise as the bootstrap standard error over photos.

On 60-99 validation photos one photo is 1-1.7 pt of agreement, so candidates tie or swap by chance;
the mean KL over ``views`` x photos moves by far less than that between reruns (the noise reported
beside it), and a view is still a photo of the same kind the model will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

VIEWS = 8  # views of each validation photo
BOOTSTRAP = 200  # resamples of the photos for the noise
SEED = 1234


@dataclass
class ViewSignal:
    """The model's logits on ``views`` seeded views of ``images`` (preprocessed NCHW), to score candidates by."""

    images: torch.Tensor
    views: int
    reference: np.ndarray  # (views, photos, classes): the model's logits

    @classmethod
    def of(cls, model, images: torch.Tensor, views: int = VIEWS) -> "ViewSignal":
        """The signal of torch ``model`` (eval) on ``views`` views of ``images``."""
        signal = cls(images, views, np.zeros(0))
        with torch.no_grad():
            signal.reference = signal._logits(lambda x: model(x).numpy())
        return signal

    def view(self, number: int) -> torch.Tensor:
        from edge.export.finetune import augmented_views

        return augmented_views(self.images, torch.Generator().manual_seed(SEED + number))

    def _logits(self, logits_of) -> np.ndarray:
        return np.stack([np.concatenate([logits_of(v[i:i + 32]) for i in range(0, len(v), 32)])
                         for v in map(self.view, range(self.views))])

    def score(self, logits_of) -> dict:
        """``logits_of`` (a batch of inputs -> numpy logits) scored against the model: ``views_kl`` (mean KL from
        the model's answers over every view), ``views_kl_noise`` (its bootstrap standard error over photos),
        ``views_agreement`` (top-1)."""
        logits = self._logits(logits_of)
        per_photo = _kl(self.reference, logits).mean(0)
        draws = np.random.default_rng(SEED).integers(0, len(per_photo), (BOOTSTRAP, len(per_photo)))
        return {"views_kl": float(per_photo.mean()), "views_kl_noise": float(per_photo[draws].mean(1).std()),
                "views_agreement": float(np.mean(logits.argmax(-1) == self.reference.argmax(-1)))}


def _kl(reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(logits)) along the last axis."""
    target = torch.log_softmax(torch.from_numpy(reference).double(), -1)
    guess = torch.log_softmax(torch.from_numpy(logits).double(), -1)
    return (target.exp() * (target - guess)).sum(-1).numpy()
