"""``at``: attention transfer (Zagoruyko & Komodakis, ICLR 2017, Eq. 2) on the post-ReLU stage outputs."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ..losses import at_loss
from ..registry import register_distiller
from .base import Distiller

__all__ = ["ATDistiller"]


@register_distiller("at")
class ATDistiller(Distiller):
    """Attention transfer on every distilled stage's post-ReLU output: beta / 2 * sum of at_loss (beta =
    1000). ``ignore_inds`` as MGD's (the attention maps of a stage must have the teacher's spatial size).

    Args:
        beta: the loss is beta / 2 times the sum over the distilled stages (1000).
    """

    cli_options = ("beta",)

    dense_outputs = True

    def __init__(self, t_net: nn.Module, s_net: nn.Module, beta: float = 1e3,
                 ignore_inds: Optional[List[int]] = None, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.beta = float(beta)
        t_stages, s_stages = len(self._t_src.channels()), len(self._s_src.channels())
        if t_stages != s_stages:
            raise ValueError(f"the teacher has {t_stages} stages but the student has {s_stages}")
        self._select_stages(t_stages, ignore_inds)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        total = sum(at_loss(torch.relu(s_feats[i]), torch.relu(t_feats[i])) for i in self.stages)
        return {"at": self.beta / 2 * total}
