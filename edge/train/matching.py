"""Knowledge distillation as function matching (Beyer et al., "Knowledge distillation: A good
teacher is patient and consistent", CVPR 2022), for a pruned StudentNet whose head is untouched.

Teacher and student see the *same* aggressively augmented input: the homework's random crop,
flip and rotation (`edge.data.datasets.augment_batch`), then mixup between the photos of a batch with
a mixing weight drawn per image from U(0, 1); the loss is the KD loss (alpha 1, label-free) on
those inputs, so a few hundred unlabelled photos give an unbounded stream of distinct points at
which the student learns the teacher's function.

When the teacher is the unpruned model itself (the default of `edge compress`), its head (the
stages `edge.prune.reconstruct.head_stages` never prunes) is the student's head: the head runs once
per batch without gradients, the teacher's tail and the student's tail both continue from its
features, and the head's weights stay frozen. BatchNorm statistics stay frozen too (a few
hundred photos and mixup would only blur them); BatchNorm's scale and shift are trained.
"""

from __future__ import annotations

import torch
from torch import nn

from edge.train.distill import kd_loss


def tail(model: nn.Module, start: int) -> nn.Module:
    """Stages ``start``.. of a StudentNet, its pooling and classifier, as one module."""
    return nn.Sequential(*list(model.cnn.children())[start:], nn.Flatten(1), model.fc)


def mixup(images: torch.Tensor) -> torch.Tensor:
    """Each image mixed with another of the batch (a random pairing) by a weight drawn from U(0, 1)."""
    weight = torch.rand(len(images), 1, 1, 1, dtype=images.dtype)
    partner = images[torch.randperm(len(images))]
    return weight * images + (1 - weight) * partner


class FunctionMatching:
    """The training objective (`edge.train.loop.fit`'s) of a pruned student matching ``teacher``.

    ``head_stages``: leading stages the student shares with ``teacher`` (both StudentNets, the
    student a pruning of it), run once and frozen; 0 for any other teacher, which then sees the
    whole mixed image."""

    def __init__(self, teacher: nn.Module, head_stages: int = 0, temperature: float = 1.0):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.head_stages, self.temperature = head_stages, temperature
        self.head = nn.Sequential(*list(teacher.cnn.children())[:head_stages]) if head_stages else None
        self.teacher_tail = tail(teacher, head_stages) if head_stages else teacher

    modules = nn.ModuleDict()  # nothing trained besides the student

    def to(self, device) -> "FunctionMatching":
        self.teacher.to(device)
        return self

    def freeze(self, model: nn.Module) -> None:
        """Freeze the student's head weights and every BatchNorm's statistics."""
        for stage in list(model.cnn.children())[:self.head_stages]:
            for p in stage.parameters():
                p.requires_grad_(False)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        """-> (loss, student logits, the teacher's answers, which accuracy is counted against)."""
        self.freeze(model)
        mixed = mixup(images)
        with torch.no_grad():
            features = self.head(mixed) if self.head is not None else mixed
            teacher = self.teacher_tail(features)
        logits = tail(model, self.head_stages)(features) if self.head is not None else model(features)
        return kd_loss(logits, teacher, None, 1.0, self.temperature), logits, teacher.argmax(1)
