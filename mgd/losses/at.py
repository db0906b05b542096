"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["attention_map", "at_loss"]


def attention_map(feature: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Spatial attention F(A) = sum_c |A_c|^p (Sec. 3.1, here averaged over channels), flattened and
    L2-normalised per image: (B, C, H, W) -> (B, H*W); float32 whatever the feature's dtype."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


@float32_loss
def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: int = 2) -> torch.Tensor:
    """|| Q_S/||Q_S|| - Q_T/||Q_T|| ||^2 averaged over images and positions (Eq. 2 with the paper's code's
    mean normalisation); the paper weights the sum over stages by beta / 2 with beta = 1000."""
    if student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"attention transfer needs equal spatial sizes, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()
