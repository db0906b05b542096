"""The segmentation task loss: per-pixel cross-entropy ignoring label 255 (torchvision's references and
OFD's ``SegmentationLosses``), safe on a crop whose every pixel is ignored."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import IGNORE_INDEX

__all__ = ["seg_cross_entropy"]


def seg_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels, in float32. A batch without any labelled pixel gives 0
    (with a gradient path), where ``F.cross_entropy(..., ignore_index=255)`` gives NaN and would stop the
    run as diverged."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp_min(1)
