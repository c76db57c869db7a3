"""Knowledge distillation: the homework's KD loss, and optional intermediate-feature hints.

``kd_loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``, the
KL averaged over the batch and computed from the student's log-softmax (homework defaults
alpha = 0.5, T = 20). With ``alpha = 1`` no label is needed: label-free distillation.

A feature hint (FitNets; "Combining Weight Pruning and Knowledge Distillation", CVPRW 2021)
adds ``weight * MSE(regressor(student_feature), teacher_feature)``, the regressor a 1x1 conv
from the student layer's channels to the teacher layer's, trained with the student; maps of
different sizes are average-pooled to the smaller one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ALPHA, TEMPERATURE = 0.5, 20.0


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None,
            alpha: float = ALPHA, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The KD loss of a batch of logits (``labels`` may be None only when ``alpha == 1``)."""
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                    reduction="batchmean")
    loss = alpha * temperature ** 2 * soft
    if alpha < 1:
        if labels is None or bool((labels < 0).any()):
            raise ValueError("alpha < 1 needs a label for every image: use alpha 1 for label-free distillation")
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels)
    return loss


class _Capture:
    """Keeps the latest output of a module (a forward hook)."""

    def __init__(self, module: nn.Module):
        self.value = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.value = output


def _layer(model: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"the {role} has no layer {name!r} (its top-level layers: {', '.join(names)})") from None


class FeatureHint(nn.Module):
    """A 1x1 regressor from ``student_layer``'s output to ``teacher_layer``'s, and their MSE."""

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layer: str, teacher_layer: str,
                 probe: torch.Tensor):
        super().__init__()
        self.student_out = _Capture(_layer(student, student_layer, "student"))
        self.teacher_out = _Capture(_layer(teacher, teacher_layer, "teacher"))
        with torch.no_grad():
            was_training = student.training
            student.eval(), teacher.eval(), student(probe), teacher(probe)
            student.train(was_training)
        s, t = self.student_out.value, self.teacher_out.value
        self.regressor = nn.Conv2d(s.shape[1], t.shape[1], 1)

    def loss(self) -> torch.Tensor:
        s, t = self.regressor(self.student_out.value), self.teacher_out.value.detach()
        size = min(s.shape[-1], t.shape[-1]), min(s.shape[-2], t.shape[-2])
        return F.mse_loss(F.adaptive_avg_pool2d(s, size[::-1]), F.adaptive_avg_pool2d(t, size[::-1]))


class Distillation:
    """The training objective of a distilled student: KD loss (+ feature hint) against ``teacher``."""

    def __init__(self, teacher: nn.Module, alpha: float = ALPHA, temperature: float = TEMPERATURE,
                 hint: FeatureHint | None = None, hint_weight: float = 1.0):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature, self.hint, self.hint_weight = alpha, temperature, hint, hint_weight

    @property
    def modules(self) -> nn.ModuleDict:
        """Trained alongside the student (the hint's regressor); saved with the run's state."""
        return nn.ModuleDict({"hint": self.hint} if self.hint else {})

    def to(self, device) -> "Distillation":
        self.teacher.to(device), self.modules.to(device)
        return self

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        """-> (loss, student logits, the targets accuracy is counted against)."""
        with torch.no_grad():
            teacher = self.teacher(images)
        logits = model(images)
        labelled = bool((labels >= 0).all())
        loss = kd_loss(logits, teacher, labels if labelled else None, self.alpha, self.temperature)
        if self.hint is not None:
            loss = loss + self.hint_weight * self.hint.loss()
        return loss, logits, labels if labelled else teacher.argmax(1)
