"""edge.train.distill: the KD loss against a hand computation (value and gradient), label-free
distillation, and the feature hint's regressor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.models.baselines import ConvNet
from edge.core.config import StudentConfig
from edge.train.distill import Distillation, FeatureHint, kd_loss
from edge.models.student import StudentNet


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


@pytest.mark.parametrize("alpha,temperature", [(0.5, 20.0), (0.9, 4.0), (0.0, 1.0), (1.0, 2.0)])
def test_kd_loss_is_the_homework_formula_by_hand(alpha, temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(0, 3, (6, 11)), rng.normal(0, 3, (6, 11))
    labels = rng.integers(0, 11, 6)
    log_p_s, log_p_t = _log_softmax(student / temperature), _log_softmax(teacher / temperature)
    kl = np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), axis=1))  # KL(teacher || student), batch mean
    ce = -np.mean(_log_softmax(student)[np.arange(6), labels])
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_kd_gradient_is_t_times_the_softened_probability_gap():
    rng = np.random.default_rng(1)
    s = torch.tensor(rng.normal(0, 2, (4, 5)), requires_grad=True)
    t = torch.tensor(rng.normal(0, 2, (4, 5)))
    kd_loss(s, t, None, alpha=1.0, temperature=20.0).backward()
    expected = 20.0 * (torch.softmax(s.detach() / 20, 1) - torch.softmax(t / 20, 1)) / 4
    assert torch.allclose(s.grad, expected, atol=1e-12)


def test_label_free_needs_alpha_one():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert float(kd_loss(s, t, None, alpha=1.0)) > 0
    with pytest.raises(ValueError, match="label-free"):
        kd_loss(s, t, torch.tensor([0, -1, 2]), alpha=0.5)


def test_distillation_without_labels_counts_agreement_with_the_teacher():
    torch.manual_seed(0)
    config = StudentConfig(widths=(8, 16), pools=(0,), input_size=16, num_classes=5, in_channels=1)
    teacher, student = ConvNet(config).eval(), StudentNet(config)
    x = torch.rand(4, 1, 16, 16)
    loss, logits, targets = Distillation(teacher, alpha=1.0)(student, x, torch.full((4,), -1))
    assert torch.equal(targets, teacher(x).argmax(1)) and logits.shape == (4, 5)
    loss.backward()
    assert student.fc[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_feature_hint_regresses_a_student_stage_onto_a_teacher_stage():
    torch.manual_seed(0)
    config = StudentConfig(widths=(8, 16, 24), pools=(0, 1), input_size=16, num_classes=5, in_channels=1)
    teacher = ConvNet(StudentConfig(widths=(32, 48), pools=(0,), input_size=16, num_classes=5, in_channels=1)).eval()
    student = StudentNet(config)
    hint = FeatureHint(student, teacher, "cnn.1", "cnn.1", torch.zeros(2, 1, 16, 16))
    assert (hint.regressor.in_channels, hint.regressor.out_channels) == (16, 48)
    objective = Distillation(teacher, alpha=0.5, temperature=4.0, hint=hint, hint_weight=2.0)
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 5, (4,))
    loss, _, _ = objective(student, x, y)
    with torch.no_grad():
        s_map = hint.regressor(student.cnn[1](student.cnn[0](x)))  # 4x4 after two pools
        t_map = torch.nn.functional.adaptive_avg_pool2d(teacher.cnn[1](teacher.cnn[0](x)), (4, 4))
        expected = kd_loss(student(x), teacher(x), y, 0.5, 4.0) + 2.0 * torch.mean((s_map - t_map) ** 2)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert hint.regressor.weight.grad.abs().sum() > 0
    assert list(objective.modules.state_dict()) == ["hint.regressor.weight", "hint.regressor.bias"]
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        FeatureHint(student, teacher, "cnn.1", "layer9", torch.zeros(2, 1, 16, 16))
