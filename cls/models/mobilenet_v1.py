"""MobileNet-V1 (Howard et al., 2017) for ImageNet-size inputs; torchvision has none.

Layout and distillation positions follow OFD's ImageNet MobileNet, which the original MGD code used:
a stem conv and 13 depthwise-separable blocks in ``self.model``; the pre-ReLU outputs of blocks 3, 5, 11
and 13 (128, 256, 512, 1024 channels at 1/4, 1/8, 1/16, 1/32 resolution).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from mgd.features import StageSpec

from .common import init_weights

__all__ = ["MobileNetV1", "mobilenet_v1"]

_BLOCKS = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
          [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.model = nn.Sequential(_conv_bn(3, 32, 2), *[_conv_dw(i, o, s) for i, o, s in _BLOCKS])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.model(x)), 1))

    def stage_specs(self) -> List[StageSpec]:
        """Input of the last ReLU of blocks 3, 5, 11, 13 (OFD's positions), with the BN before it."""
        return [StageSpec(f"model.{i}.5", capture="input", bn=f"model.{i}.4") for i in (3, 5, 11, 13)]


def mobilenet_v1(num_classes: int = 1000) -> MobileNetV1:
    return MobileNetV1(num_classes)
