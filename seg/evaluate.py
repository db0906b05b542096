"""Validation of a segmentation model: mIoU, pixel accuracy, per-class IoU and mean per-pixel loss, exact
over processes (each rank evaluates its disjoint shard; the confusion matrix and the loss sums are
all-reduced)."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mgd import distributed as mdist

from .metrics import IGNORE_INDEX, ConfusionMatrix

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, show_progress: bool = False
             ) -> Dict[str, Any]:
    """{"miou", "pixel_acc", "iou" (per class), "loss", "images"} of ``model`` over ``loader`` (batches of
    images and label maps at the original resolution), summed over every process."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, labelled pixels, images
    for images, target in tqdm(loader, desc="val", disable=not show_progress, leave=False, mininterval=1.0):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        logits = model(images).float()
        matrix.update(target, logits.argmax(1))
        sums[0] += F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum").double()
        sums[1] += (target != IGNORE_INDEX).sum()
        sums[2] += images.shape[0]
    model.train(was_training)
    matrix.all_reduce()
    mdist.all_reduce_sum(sums)
    return {**matrix.compute(), "loss": (sums[0] / sums[1].clamp_min(1)).item(), "images": int(sums[2].item())}
