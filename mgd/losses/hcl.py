"""ReviewKD's hierarchical context loss (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge
Review", Sec. 3.3)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["hcl_loss", "HCL_LEVELS"]

#: The pooled sizes compared besides the map itself (those smaller than the map).
HCL_LEVELS = (4, 2, 1)


@float32_loss
def hcl_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of [MSE(s, t) + sum_k 2^-k MSE(pool_k(s), pool_k(t))] / (1 + sum_k 2^-k).

    pool_k is an adaptive average pool to the k-th of the sizes 4x4, 2x2, 1x1 that is smaller than the map
    (a 4x4 map compares 2x2 and 1x1 with weights 1/2 and 1/4; a 1x1 map only itself), as in the authors'
    code. Each MSE is the mean over elements.
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"{len(student_feats)} student features for {len(teacher_feats)} teacher features")
    total = torch.zeros((), device=student_feats[0].device)
    for s, t in zip(student_feats, teacher_feats):
        if s.shape != t.shape:
            raise ValueError(f"student feature {tuple(s.shape)} and teacher feature {tuple(t.shape)} differ")
        s, t = s.float(), t.detach().float()
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= s.shape[-1]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            weights += weight
        total = total + loss / weights
    return total
