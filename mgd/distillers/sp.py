"""``sp``: similarity-preserving KD (Tung & Mori, ICCV 2019, Eq. 4) on the last stage's post-ReLU output."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import sp_loss
from ..registry import register_distiller
from .base import Distiller

__all__ = ["SPDistiller"]


@register_distiller("sp")
class SPDistiller(Distiller):
    """Similarity-preserving KD on the last stage's post-ReLU output: gamma * sp_loss (gamma = 3000).

    Args:
        gamma: weight of the similarity-preserving loss (3000).
    """

    cli_options = ("gamma",)

    dense_outputs = True

    def __init__(self, t_net: nn.Module, s_net: nn.Module, gamma: float = 3e3, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.gamma = float(gamma)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"sp": self.gamma * sp_loss(torch.relu(s_feats[-1]), torch.relu(t_feats[-1]))}
