"""MobileNetV2 for 32 px inputs: the CIFAR student of the CRD / DKD tables, built from torchvision's blocks.

The design is RepDistiller's ``mobile_half`` (Tian et al., ICLR 2020, HobbitLong/RepDistiller
``models/mobilenetv2.py``, after Jin et al.'s "Route Constrained Optimization"): Sandler et al.'s
MobileNetV2 with width multiplier 0.5, the 24-channel group at stride 1 instead of 2 (so a 32 px input
ends at 2x2, total stride 16), channels ``int(c * width)`` (no rounding to multiples of 8) and a
1280-channel last convolution. Departures, from using torchvision's ``InvertedResidual`` as is: ReLU6
instead of ReLU, and no expansion convolution in the first block (expansion ratio 1), as in the
MobileNetV2 paper and torchvision.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops import Conv2dNormActivation

from mgd.features import StageSpec

from .common import init_weights

__all__ = ["CifarMobileNetV2"]

#: (expansion t, channels c, blocks n, first stride s) per group; RepDistiller's CIFAR strides.
_GROUPS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
#: The groups whose outputs are the distillation stages (RepDistiller's ``get_bn_before_relu``).
_STAGE_GROUPS = (1, 2, 4, 6)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for small inputs; ``width`` 0.5 is CRD's student (``mobile_half``)."""

    def __init__(self, num_classes: int = 100, width: float = 0.5) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"MobileNetV2 width multiplier must be positive, got {width}")
        channels = int(32 * width)
        self.conv1 = Conv2dNormActivation(3, channels, stride=2, activation_layer=nn.ReLU6)
        groups = []
        for t, c, n, s in _GROUPS:
            out = int(c * width)
            groups.append(nn.Sequential(*[InvertedResidual(channels if i == 0 else out, out, s if i == 0 else 1, t)
                                          for i in range(n)]))
            channels = out
        self.blocks = nn.Sequential(*groups)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = Conv2dNormActivation(channels, last, kernel_size=1, activation_layer=nn.ReLU6)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.blocks(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_specs(self) -> List[StageSpec]:
        """The outputs of groups 1, 2, 4 and 6 (1/2, 1/4, 1/8, 1/16 of the input), RepDistiller's positions.
        A group ends in a linear bottleneck (BN, no ReLU), so its output is pre-activation; the margin BN
        is the last block's final BN (the residual sum is added to it, as in a ResNet's stages)."""
        specs = []
        for g in _STAGE_GROUPS:
            last = len(self.blocks[g]) - 1
            conv = self.blocks[g][last].conv
            bn = f"blocks.{g}.{last}.conv.{len(conv) - 1}"
            specs.append(StageSpec(f"blocks.{g}", bn=bn, channels=conv[-1].num_features))
        return specs
