"""Feature maps of two sizes made comparable, as mdistiller's AT and OFD do (``mdistiller/distillers/AT.py``,
``OFD.py``): the larger map is average-pooled to the smaller one's size (``F.adaptive_avg_pool2d``). Pairs
whose stages reduce differently (ResNet-32x4 -> ShuffleNet-V1/V2 on CIFAR) then distil at every stage."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["match_spatial"]


def match_spatial(student: torch.Tensor, teacher: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) (N, C, H, W) maps at one spatial size: the larger pooled to the smaller; unchanged
    when equal. Height and width are compared together: a map larger in one and smaller in the other is
    pooled to the smaller of each."""
    if student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if student.shape[2:] != size:
        student = F.adaptive_avg_pool2d(student, size)
    if teacher.shape[2:] != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher
