"""``ofd``: A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019): a 1x1 conv + BN connector
per stage, the partial L2 (Eq. 6) to the teacher's pre-ReLU features above the margins (Eq. 3-4)."""
from __future__ import annotations

import torch
from torch import nn

from ..losses.ofd import margin_target, partial_l2
from ..losses.spatial import match_spatial
from ..registry import register_distiller
from .partial_l2 import LossFactor, PartialL2Distiller

__all__ = ["OFDistiller"]


@register_distiller("ofd")
class OFDistiller(PartialL2Distiller):
    """OFD: connector (1x1 conv + BN, student -> teacher channels) per stage, partial L2 above the margins.

    The summed loss is divided by the batch size and ``loss_factor`` (OFD's code: 1e4 on ImageNet, 1e3 on
    CIFAR). ``teacher_train_mode=True`` keeps the teacher's BN in train mode, as the paper's code does.

    Args:
        teacher_train_mode: 1 keeps the teacher's BatchNorm in train mode, as OFD's code did (0: eval mode).
    """

    cli_options = PartialL2Distiller.cli_options + ("teacher_train_mode",)

    factor_terms = ("ofd",)

    def __init__(self, t_net: nn.Module, s_net: nn.Module, loss_factor: LossFactor = 1e4, **kwargs) -> None:
        super().__init__(t_net, s_net, loss_factor=loss_factor, **kwargs)
        self.connectors = nn.ModuleList([  # none (an Identity) for an ignored stage: no unused parameters
            nn.Sequential(nn.Conv2d(s, t, 1, bias=False), nn.BatchNorm2d(t)) if i in self.stages else nn.Identity()
            for i, (s, t) in enumerate(zip(self.s_channels, self.t_channels))])
        for i in self.stages:
            nn.init.kaiming_normal_(self.connectors[i][0].weight, mode="fan_out", nonlinearity="relu")

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        batch = s_feats[self.stages[0]].shape[0]  # from the features: a detector hands no logits
        total = torch.zeros((), device=s_feats[self.stages[0]].device)
        for i in self.stages:
            # maps of two sizes (other stage reductions): the larger pooled to the smaller, as mdistiller's OFD
            student, teacher = match_spatial(self.connectors[i](s_feats[i].float()), t_feats[i])
            target_i, floor = margin_target(teacher, self.margins[i])
            total = total + partial_l2(student, target_i, floor) * self.stage_weights[i]
        return {"ofd": self.normalise(total, batch)}
