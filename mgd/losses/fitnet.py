"""FitNets' hint loss (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015, "FitNets: Hints for Thin Deep
Nets", Sec. 2.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss
from .spatial import match_spatial

__all__ = ["fitnet_loss"]


@float32_loss
def fitnet_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """The mean squared error between the regressor's output on the student's guided layer and the teacher's
    hint layer, averaged over every element.

    The paper's hint loss (Eq. 3) is L_HT = 1/2 ||u_h(x) - r(v_g(x))||^2, a sum over the hint's elements; the
    code the baselines are trained with (mdistiller ``FitNet.py``, RepDistiller ``HintLoss``) takes
    ``F.mse_loss``, the mean, and weighs it by 100: this is that mean (L_HT = numel / 2 times it). Maps of two
    sizes: the larger is average-pooled to the smaller's (:func:`~mgd.losses.spatial.match_spatial`). Both
    inputs are (N, C, H, W) with the same C (the regressor maps the student's width to the teacher's); the hint
    receives no gradient. Computed in float32 whatever the inputs' dtype.
    """
    regressed, hint = match_spatial(regressed, hint)
    if regressed.shape[:2] != hint.shape[:2]:
        raise ValueError(f"regressed {tuple(regressed.shape)} and hint {tuple(hint.shape)} differ in batch or "
                         "channels; the regressor must map the student's channels to the teacher's")
    return F.mse_loss(regressed.float(), hint.detach().float())
