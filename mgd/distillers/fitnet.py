"""``fitnet``: FitNets (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets"): hint-based training, a
regressor from the student's guided layer to the teacher's hint layer and the squared error between them (Sec. 2.2,
Eq. 3), trained in one stage with the cross-entropy as mdistiller and RepDistiller train their FitNet baseline."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch
from torch import nn

from ..losses.fitnet import fitnet_loss
from ..registry import register_distiller
from .base import Distiller

__all__ = ["FitNetDistiller", "hint_regressor"]

#: What the stage widths are read from when the positions do not say: one small forward.
_EXAMPLE_INPUT = (2, 3, 64, 64)


def hint_regressor(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """The convolutional regressor r of the paper (Sec. 2.2): mdistiller's / RepDistiller's ``ConvReg`` for maps of
    one size, a 1x1 convolution (with bias) to the teacher's width, BatchNorm and ReLU (the hint is a post-ReLU
    feature, so the regressor ends in the same non-linearity, as the paper asks)."""
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, kernel_size=1),
                         nn.BatchNorm2d(teacher_channels), nn.ReLU())


@register_distiller("fitnet")
class FitNetDistiller(Distiller):
    """FitNet: CE + weight * MSE(r(relu(S_g)), relu(T_h)), the student's guided layer g regressed onto the
    teacher's hint layer h, both post-ReLU stage outputs (mdistiller's ``feats``) at the same stage position.

    Defaults: mdistiller's CIFAR-100 recipe (``mdistiller/engine/cfg.py``: ``FITNET.HINT_LAYER`` 2,
    ``LOSS.FEAT_WEIGHT`` 100, ``LOSS.CE_WEIGHT`` 1; ``configs/cifar100/fitnet.yaml``), the same as RepDistiller's
    ``--distill hint -a 0 -b 100`` with ``--hint_layer 2``. The regressor is :func:`hint_regressor`; maps of two
    sizes are compared at the smaller (the larger average-pooled, :func:`mgd.losses.spatial.match_spatial`, as
    AT and OFD here) rather than through ``ConvReg``'s strided or size-fitted kernels, which fix the input size
    at construction. One stage, as mdistiller and RepDistiller: the paper's first stage (hints alone, the guided
    layer and regressor only) followed by a KD stage is not offered.

    Args:
        weight: weight of the hint loss beside a cross-entropy of weight 1 (100, mdistiller's and RepDistiller's).
        hint_layer: the stage position (counted from 1) whose teacher feature is the hint and whose student
            feature is the guided layer (2: the second stage, mdistiller's ``HINT_LAYER`` 2, which counts its stem
            as 0); ``teacher_layers`` / ``student_layers`` choose other positions.
    """

    cli_options = ("weight", "hint_layer")
    dense_outputs = True  # the hint loss compares any (N, C, H, W) pair of stage features

    def __init__(self, t_net: nn.Module, s_net: nn.Module, weight: float = 100.0, hint_layer: int = 2,
                 teacher_channels: Optional[Sequence[int]] = None, student_channels: Optional[Sequence[int]] = None,
                 example_input: Optional[torch.Tensor] = None, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        if not weight >= 0:
            raise ValueError(f"fitnet weight must be >= 0, got {weight}")
        self.weight = float(weight)
        if example_input is None and (teacher_channels is None or student_channels is None):
            example_input = torch.zeros(_EXAMPLE_INPUT, device=next(iter(s_net.parameters())).device)
        t_ch, s_ch = self._stage_channels(teacher_channels, student_channels, example_input)
        if isinstance(hint_layer, bool) or not isinstance(hint_layer, numbers.Integral) \
                or not 1 <= hint_layer <= len(t_ch):
            raise ValueError(f"fitnet hint_layer must be a stage position from 1 to {len(t_ch)} (the pair has "
                             f"{len(t_ch)} stage positions), got {hint_layer!r}")
        self.hint_layer = int(hint_layer)
        self.regressor = hint_regressor(s_ch[hint_layer - 1], t_ch[hint_layer - 1])

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        i = self.hint_layer - 1
        regressed = self.regressor(torch.relu(s_feats[i].float()))
        return {"fitnet": self.weight * fitnet_loss(regressed, torch.relu(t_feats[i]))}
