"""Segmentation metrics from one confusion matrix (as torchvision's references/segmentation and OFD's
Evaluator): mean IoU, pixel accuracy and per-class IoU.

The matrix counts pixels, so summing it over processes is exact: with disjoint, unpadded evaluation shards
(:func:`mgd.engine.eval_loader`) every validation image is counted once, whatever the number of processes.
Pixels labelled 255 (or anything outside [0, num_classes)) are ignored. A class that is neither in the
labels nor in the predictions has no IoU (0 / 0) and is left out of the mean, as OFD's ``np.nanmean``; a
class predicted but absent from the labels has IoU 0 and counts.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch

from mgd import distributed as mdist

__all__ = ["ConfusionMatrix", "IGNORE_INDEX"]

#: The label of pixels that count nowhere (VOC's object borders, Cityscapes' void classes, padding).
IGNORE_INDEX = 255


class ConfusionMatrix:
    """``mat[t, p]``: pixels of true class t predicted as p (int64, on ``device``)."""

    def __init__(self, num_classes: int, device: torch.device = torch.device("cpu")) -> None:
        self.num_classes = int(num_classes)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, prediction: torch.Tensor) -> None:
        """Add a batch of label maps and predicted class maps of the same shape."""
        if target.shape != prediction.shape:
            raise ValueError(f"labels {tuple(target.shape)} and predictions {tuple(prediction.shape)} differ")
        n = self.num_classes
        keep = (target >= 0) & (target < n)
        index = target[keep].to(torch.int64) * n + prediction[keep].to(torch.int64)
        self.mat += torch.bincount(index, minlength=n * n).reshape(n, n).to(self.mat.device)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over all processes (a no-op in a single process)."""
        mdist.all_reduce_sum(self.mat)
        return self

    def per_class_iou(self) -> List[float]:
        """IoU of each class in [0, 1]; NaN for a class neither labelled nor predicted."""
        mat = self.mat.double()
        inter = mat.diag()
        union = mat.sum(0) + mat.sum(1) - inter
        return [float("nan") if u == 0 else float(i / u) for i, u in zip(inter.tolist(), union.tolist())]

    def compute(self) -> Dict[str, object]:
        """{"miou", "pixel_acc"} in percent and "iou": per-class IoU in percent (None where undefined)."""
        ious = self.per_class_iou()
        defined = [v for v in ious if not math.isnan(v)]
        total = int(self.mat.sum())
        return {"miou": 100.0 * sum(defined) / len(defined) if defined else 0.0,
                "pixel_acc": 100.0 * float(self.mat.diag().sum()) / total if total else 0.0,
                "iou": [None if math.isnan(v) else round(100.0 * v, 4) for v in ious]}
