"""Similarity-preserving distillation (Tung & Mori, ICCV 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["sp_loss"]


def _similarity(feature: torch.Tensor) -> torch.Tensor:
    """G~ = row-normalised Q Q^T for the batch's flattened activations Q (B, C*H*W) (Eq. 2-3), in float32."""
    flat = feature.float().flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


@float32_loss
def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1/b^2 || G~_T - G~_S ||_F^2 (Eq. 4 for one layer pair); the paper weights it by gamma = 3000.
    Channels and spatial sizes may differ: only the (b, b) similarities are compared."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError("student and teacher features must come from the same batch")
    b = student.shape[0]
    return (_similarity(teacher) - _similarity(student)).pow(2).sum() / (b * b)
