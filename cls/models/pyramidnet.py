"""PyramidNet (Han, Kim & Kim, CVPR 2017) for 32 px inputs: the teacher and student of OFD's CIFAR-100
settings e-f (Heo et al., ICCV 2019, clovaai/overhaul-distillation ``CIFAR-100/models/PyramidNet.py``):
PyramidNet-200 (alpha 240, bottleneck) teaching WRN-28-4 (e) and PyramidNet-110 (alpha 84, basic) (f).

The width grows by alpha / (3n) channels per block (rounded as in OFD's code), blocks are
BN-conv-BN-ReLU-conv-BN (bottleneck: three convs) with no ReLU after the sum, and the shortcut is the
identity, average-pooled at stride 2 and zero-padded to the block's width. Parameter names and shapes are
those of OFD's model (conv1, bn1, layer1-3, bn_final, fc), so its state dicts load. Written here: torchvision
has no PyramidNet, and its blocks (zero-padded shortcut, no ReLU after the sum) fit none of torchvision's.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from mgd.features import StageSpec

from .common import init_weights

__all__ = ["PyramidNet"]


def _padded_sum(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """out + shortcut, the shortcut zero-padded with channels at the end up to out's width."""
    extra = out.shape[1] - shortcut.shape[1]
    return out + (F.pad(shortcut, (0, 0, 0, 0, 0, extra)) if extra else shortcut)


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.relu(self.bn2(self.conv1(self.bn1(x))))))
        return _padded_sum(out, x if self.downsample is None else self.downsample(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * 4)
        self.downsample = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu2(self.bn2(self.conv1(self.bn1(x))))
        out = self.bn4(self.conv3(self.relu3(self.bn3(self.conv2(out)))))
        return _padded_sum(out, x if self.downsample is None else self.downsample(x))


class PyramidNet(nn.Module):
    """PyramidNet-depth with widening factor ``alpha``; depth 6n+2 (basic blocks) or 9n+2 (bottleneck)."""

    def __init__(self, depth: int = 110, alpha: int = 84, num_classes: int = 100, bottleneck: bool = False) -> None:
        super().__init__()
        per_block = 9 if bottleneck else 6
        if depth < per_block + 2 or (depth - 2) % per_block:
            kind = "bottleneck PyramidNet depth must be 9n+2 (11, 164, 200, 272)" if bottleneck else \
                "PyramidNet depth must be 6n+2 (8, 110, 164)"
            raise ValueError(f"{kind}, got {depth}")
        block = _Bottleneck if bottleneck else _Basic
        n = (depth - 2) // per_block
        self.addrate = alpha / (3 * n)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self._width, self._in_planes = 16.0, 16
        self.layer1 = self._stage(block, n, 1)
        self.layer2 = self._stage(block, n, 2)
        self.layer3 = self._stage(block, n, 2)
        self.bn_final = nn.BatchNorm2d(self._in_planes)
        self.relu_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self._in_planes, num_classes)
        init_weights(self)

    def _stage(self, block, blocks: int, stride: int) -> nn.Sequential:
        """Each block widens by ``addrate``; the widths are rounded exactly as in OFD's code."""
        layers = []
        for i in range(blocks):
            self._width += self.addrate
            planes = int(round(self._width))
            layers.append(block(self._in_planes, planes, stride if i == 0 else 1))
            self._in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.bn1(self.conv1(x)))))
        x = self.relu_final(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_specs(self) -> List[StageSpec]:
        """OFD's positions: layer1's and layer2's outputs through the next stage's first BN (bottleneck:
        through its first conv and the BN before the first ReLU, still at the earlier resolution), and the
        final BN's output before the last ReLU; the margins from those BNs. In a basic block that first BN
        feeds a conv directly: OFD distils it all the same."""
        if isinstance(self.layer1[0], _Bottleneck):
            inner = [StageSpec(f"{name}.0.relu2", capture="input", bn=f"{name}.0.bn2") for name in ("layer2", "layer3")]
        else:
            inner = [StageSpec(f"{name}.0.bn1", bn=f"{name}.0.bn1") for name in ("layer2", "layer3")]
        return inner + [StageSpec("relu_final", capture="input", bn="bn_final")]
