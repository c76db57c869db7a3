"""The homework report's architecture baselines, sized to the StudentNet they are compared with.

``cnn``: plain 3x3 convolutions; ``group``: 3x3 group convolutions (after the first conv) with a
channel shuffle between stages so the groups mix, as ShuffleNet does. Both keep the student's
layout (conv-BN-ReLU6 stages, its max-pool positions, global average pool, Linear) and scale
the homework's widths by one factor so the parameter count matches the depthwise-separable
student's (``dw``) within a few per cent.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from edge.core.config import ConfigError, StudentConfig


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ConvNet(nn.Module):
    """StudentNet's layout with full (``groups=1``) or grouped 3x3 convolutions."""

    def __init__(self, config: StudentConfig, groups: int = 1):
        super().__init__()
        bad = [w for w in config.widths if w % groups]
        if bad:
            raise ConfigError(f"widths {bad} are not multiples of groups={groups}")
        stages, channels = [], config.in_channels
        for stage, width in enumerate(config.widths):
            g = groups if stage else 1
            layers = [nn.Conv2d(channels, width, 3, 1, 1, groups=g), nn.BatchNorm2d(width), nn.ReLU6()]
            if g > 1:
                layers.append(ChannelShuffle(g))
            if stage in config.pools:
                layers.append(nn.MaxPool2d(2, 2, 0))
            stages.append(nn.Sequential(*layers))
            channels = width
        self.cnn = nn.Sequential(*stages, nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Sequential(nn.Linear(channels, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(x).flatten(1))


def convnet_parameters(config: StudentConfig, groups: int = 1) -> int:
    """Trainable parameters of ``ConvNet(config, groups)`` (convs with bias, BN affine, Linear)."""
    total, channels = 0, config.in_channels
    for stage, width in enumerate(config.widths):
        g = groups if stage else 1
        total += channels // g * width * 9 + width + 2 * width
        channels = width
    return total + channels * config.num_classes + config.num_classes


def convnet_flops(config: StudentConfig, groups: int = 1) -> int:
    """Multiply-accumulates x2 per image of the folded ``ConvNet(config, groups)`` (as `StudentConfig.flops`)."""
    size, total, channels = config.input_size, 0, config.in_channels
    for stage, width in enumerate(config.widths):
        total += size * size * width * (channels // (groups if stage else 1)) * 9
        channels = width
        if stage in config.pools:
            size //= 2
    return 2 * (total + channels * config.num_classes)


def sized_like(student: StudentConfig, groups: int = 1) -> StudentConfig:
    """``student`` with its widths scaled by one factor (rounded to multiples of ``groups``) so that
    ``ConvNet(config, groups)`` has about as many parameters as the StudentNet ``student``."""
    target = student.num_parameters()

    def scaled(factor: float) -> StudentConfig:
        widths = tuple(max(groups, round(w * factor / groups) * groups) for w in student.widths)
        return replace(student, widths=widths)

    factors = [f / 1000 for f in range(50, 3001)]
    best = min(factors, key=lambda f: abs(convnet_parameters(scaled(f), groups) - target))
    return scaled(best)
