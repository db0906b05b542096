"""ShuffleNetV1 and ShuffleNetV2 for 32 px inputs: the CIFAR students of the CRD / DKD tables.

Both follow RepDistiller (Tian et al., ICLR 2020, HobbitLong/RepDistiller ``models/ShuffleNetv1.py``,
``models/ShuffleNetv2.py``): the ImageNet stem (3x3 stride-2 conv + max-pool) is replaced by a 1x1
convolution to 24 channels at full resolution, three stages each starting at stride 2 (32 -> 16 -> 8 -> 4).

* ``CifarShuffleNetV1``: Zhang et al. (CVPR 2018), 3 groups, stages 240-480-960 of 4-8-4 units; no group
  convolution on the first pointwise layer after the stem (as in the paper). torchvision has no
  ShuffleNetV1: the unit is written here, with torchvision's ``channel_shuffle``.
* ``CifarShuffleNetV2``: Ma et al. (ECCV 2018), torchvision's ``InvertedResidual`` units (the same
  computation as RepDistiller's DownBlock / BasicBlock), 4-8-4 units per stage, the paper's widths
  (x1.0: 116-232-464, 1024 last; RepDistiller's ``ShuffleV2`` is x1.0).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual, channel_shuffle

from mgd.features import StageSpec

from .common import init_weights

__all__ = ["CifarShuffleNetV1", "CifarShuffleNetV2", "SHUFFLENET_V2_WIDTHS"]

#: Stage and last-convolution widths of ShuffleNetV2 per width multiplier (the paper's, torchvision's).
SHUFFLENET_V2_WIDTHS = {"0_5": (48, 96, 192, 1024), "1_0": (116, 232, 464, 1024), "1_5": (176, 352, 704, 1024),
                        "2_0": (244, 488, 976, 2048)}
_STEM = 24


def _stem() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, _STEM, 1, bias=False), nn.BatchNorm2d(_STEM), nn.ReLU(inplace=True))


class _ShuffleV1Unit(nn.Module):
    """ShuffleNet unit: grouped 1x1 conv, channel shuffle, 3x3 depthwise conv (stride), grouped 1x1 conv;
    added to the input, or concatenated with its 3x3 average pool at stride 2; then ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, group_first: bool = True) -> None:
        super().__init__()
        branch = out_planes - in_planes if stride == 2 else out_planes
        mid = branch // 4
        self.first_groups = groups if group_first else 1
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.relu1(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        out = out + x if self.shortcut is None else torch.cat([out, self.shortcut(x)], 1)
        return self.relu(out)


class CifarShuffleNetV1(nn.Module):
    """ShuffleNetV1 (g = 3 by default) for small inputs: RepDistiller's ``ShuffleV1``."""

    def __init__(self, num_classes: int = 100, groups: int = 3, widths=(240, 480, 960), repeats=(4, 8, 4)) -> None:
        super().__init__()
        self.conv1 = _stem()
        in_planes = _STEM
        for k, (width, n) in enumerate(zip(widths, repeats), start=1):
            units = []
            for i in range(n):
                units.append(_ShuffleV1Unit(in_planes, width, 2 if i == 0 else 1, groups, group_first=k > 1 or i > 0))
                in_planes = width
            setattr(self, f"layer{k}", nn.Sequential(*units))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_specs(self) -> List[StageSpec]:
        """The input of each stage's last ReLU: the residual sum, pre-ReLU (RepDistiller's ``preact``),
        with the unit's last BN for the margins, as for a ResNet's stages."""
        specs = []
        for name in ("layer1", "layer2", "layer3"):
            last = len(getattr(self, name)) - 1
            specs.append(StageSpec(f"{name}.{last}.relu", capture="input", bn=f"{name}.{last}.bn3"))
        return specs


class CifarShuffleNetV2(nn.Module):
    """ShuffleNetV2 for small inputs (torchvision's units and layer names, RepDistiller's stem)."""

    def __init__(self, num_classes: int = 100, width: str = "1_0", repeats=(4, 8, 4)) -> None:
        super().__init__()
        if width not in SHUFFLENET_V2_WIDTHS:
            raise ValueError(f"ShuffleNetV2 width must be one of {', '.join(SHUFFLENET_V2_WIDTHS)}, got {width!r}")
        *stages, last = SHUFFLENET_V2_WIDTHS[width]
        self.conv1 = _stem()
        in_planes = _STEM
        for k, (out, n) in enumerate(zip(stages, repeats), start=2):
            units = [InvertedResidual(in_planes, out, 2)] + [InvertedResidual(out, out, 1) for _ in range(n - 1)]
            setattr(self, f"stage{k}", nn.Sequential(*units))
            in_planes = out
        self.conv5 = nn.Sequential(nn.Conv2d(in_planes, last, 1, bias=False), nn.BatchNorm2d(last),
                                   nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.conv5(x)), 1))

    def stage_specs(self) -> List[StageSpec]:
        """The input of the final ReLU of each stage's last unit's computed branch: its new half of the
        channels, pre-ReLU, with the BN that produces it. Departure: RepDistiller's ``preact`` also
        concatenates the other half, passed through from the unit's input (post-ReLU, no BN of its own),
        so no single BN would give its margins; this position keeps the stage fully pre-ReLU."""
        specs = []
        for name in ("stage2", "stage3", "stage4"):
            last = len(getattr(self, name)) - 1
            branch = f"{name}.{last}.branch2"
            specs.append(StageSpec(f"{branch}.7", capture="input", bn=f"{branch}.6"))
        return specs
