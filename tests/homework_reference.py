"""The homework's own code, written out as the homework had it, as an independent reference:
its StudentNet (width_mult=1) and its decode8/decode16 functions (plain pickle.load: used only on
the trusted files from ../shared and on files the tests write)."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from torch import nn


def homework_student(widths=(16, 32, 64, 128, 256, 256, 256, 256), pools=(0, 1, 2, 3), classes=11) -> nn.Module:
    stages = [nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1), nn.BatchNorm2d(widths[0]), nn.ReLU6(),
                            *([nn.MaxPool2d(2, 2, 0)] if 0 in pools else []))]
    for i in range(1, len(widths)):
        c, d = widths[i - 1], widths[i]
        stages.append(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(),
                                    nn.Conv2d(c, d, 1), *([nn.MaxPool2d(2, 2, 0)] if i in pools else [])))
    model = nn.Module()
    model.cnn = nn.Sequential(*stages, nn.AdaptiveAvgPool2d((1, 1)))
    model.fc = nn.Sequential(nn.Linear(widths[-1], classes))
    model.forward = lambda x: model.fc(model.cnn(x).view(x.size(0), -1))
    return model


def decode8(fname):
    params = pickle.load(open(fname, "rb"))
    custom_dict = {}
    for (name, param) in params.items():
        if type(param) == tuple:
            min_val, max_val, param = param
            param = np.float64(param)
            param = (param / 255 * (max_val - min_val)) + min_val
            param = torch.tensor(param)
        else:
            param = torch.tensor(param)
        custom_dict[name] = param
    return custom_dict


def decode16(fname):
    params = pickle.load(open(fname, "rb"))
    custom_dict = {}
    for (name, param) in params.items():
        param = torch.tensor(param)
        custom_dict[name] = param
    return custom_dict
