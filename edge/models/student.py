"""The StudentNet family in torch, built from a `StudentConfig`.

Module indices reproduce the homework's parameter names (``cnn.{i}.{j}.*``, ``fc.0.*``), so
its state dicts load as they are and ours load into the homework's code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge.core.config import StudentConfig


def _stage(config: StudentConfig, stage: int, in_channels: int) -> nn.Sequential:
    width = config.widths[stage]
    if stage == 0:
        layers = [nn.Conv2d(in_channels, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU6()]
    else:
        layers = [nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels), nn.BatchNorm2d(in_channels),
                  nn.ReLU6(), nn.Conv2d(in_channels, width, 1)]
    if stage in config.pools:
        layers.append(nn.MaxPool2d(2, 2, 0))
    return nn.Sequential(*layers)


class StudentNet(nn.Module):
    """conv3x3-BN-ReLU6, then depthwise-separable stages, global average pool, Linear."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        channels = [config.in_channels, *config.widths]
        self.cnn = nn.Sequential(*(_stage(config, i, channels[i]) for i in range(config.depth)),
                                 nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Sequential(nn.Linear(config.widths[-1], config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(x).flatten(1))


def build_student(config: StudentConfig, state: dict[str, np.ndarray] | None = None) -> StudentNet:
    """A StudentNet in eval mode, with ``state`` (numpy, homework names) loaded if given."""
    model = StudentNet(config)
    if state is not None:
        result = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                                       strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise KeyError(f"weights do not fit the config: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.eval()


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
