"""Small-input (28-32 px) networks from the CIFAR distillation tables, built from torchvision blocks.

* ``CifarResNet``: He et al.'s CIFAR ResNet (depth 6n+2, three stages of BasicBlocks, widths w-2w-4w),
  with 1x1-conv projection shortcuts so torchvision's BasicBlock is used as is. ResNet-20/32/56/110 are
  ``width=16``; CRD's (Tian et al., ICLR 2020; HobbitLong/RepDistiller ``models/resnet.py``) resnet8x4 and
  resnet32x4 have a 32-channel stem and stages 64-128-256 (``width=64, stem_width=32``). Parameter names
  and shapes are those of RepDistiller's CIFAR ResNets (conv1, bn1, layer1-3 of conv1/bn1/conv2/bn2/downsample
  blocks, fc), so its state dicts load.
* ``WideResNet``: Zagoruyko & Komodakis' pre-activation WRN-d-k (three stages, widths 16k-32k-64k).
* ``cifar_bottleneck_resnet50``: CRD's CIFAR ResNet-50 teacher (RepDistiller ``models/resnetv2.py``, KD++'s
  ``CIFAR/Models/resnetv2_cifar.py``, the ResNet-50 -> MobileNetV2 row): torchvision's ResNet-50 with a 3x3
  stride-1 stem and no max-pool, the rest (bottlenecks with the stride on the 3x3, four stages) unchanged.

Each class documents its distillation positions in ``stage_specs()`` (pre-ReLU tensors, the BN that
produces them), so the library captures them with hooks; the forwards are ordinary.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn
import torchvision
from torchvision.models.resnet import BasicBlock

from mgd.features import StageSpec, residual_stages

from .common import init_weights

__all__ = ["CifarResNet", "WideResNet", "cifar_bottleneck_resnet50"]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small inputs; ``width`` is the first stage's channel count (16 in the paper),
    ``stem_width`` the first convolution's (default: ``width``; 32 in CRD's x4 models)."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, stem_width: Optional[int] = None
                 ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        stem_width = stem_width or width
        self.conv1 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = stem_width
        self.layer1 = self._stage(width, n, 1)
        self.layer2 = self._stage(width * 2, n, 2)
        self.layer3 = self._stage(width * 4, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)
        init_weights(self)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_specs(self) -> List[StageSpec]:
        """The residual sum entering each stage's last ReLU."""
        return residual_stages(self, ("layer1", "layer2", "layer3"))


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-conv, projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """WRN-depth-k; depth = 6n + 4."""

    def __init__(self, depth: int = 16, widen: int = 2, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._stage(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._stage(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(*[_WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout)
                               for i in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_specs(self) -> List[StageSpec]:
        """Each stage's output after the next pre-activation BN, before its ReLU (OFD's WRN positions)."""
        return [StageSpec("block2.0.relu1", capture="input", bn="block2.0.bn1"),
                StageSpec("block3.0.relu1", capture="input", bn="block3.0.bn1"),
                StageSpec("relu", capture="input", bn="bn")]


def cifar_bottleneck_resnet50(num_classes: int) -> torchvision.models.ResNet:
    """torchvision's ResNet-50 for 32 px inputs: ``conv1`` a 3x3 stride-1 convolution, no max-pool, so the
    four stages see 32, 16, 8 and 4 px, as in CRD's ``ResNet50`` (RepDistiller ``models/resnetv2.py``).
    Still a torchvision ``ResNet``: the library's built-in stage positions apply."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
