"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss
from .spatial import match_spatial

__all__ = ["attention_map", "at_loss"]


def attention_map(feature: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Spatial attention F(A) = sum_c |A_c|^p (Sec. 3.1, here averaged over channels), flattened and
    L2-normalised per image: (B, C, H, W) -> (B, H*W); float32 whatever the feature's dtype."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


@float32_loss
def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: int = 2) -> torch.Tensor:
    """|| Q_S/||Q_S|| - Q_T/||Q_T|| ||^2 averaged over images and positions (Eq. 2 with the paper's code's
    mean normalisation); the paper weights the sum over stages by beta / 2 with beta = 1000. Maps of two
    sizes: the larger is pooled to the smaller's (:func:`~mgd.losses.spatial.match_spatial`, mdistiller's)."""
    student, teacher = match_spatial(student, teacher)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()
