"""Channel-wise distillation (Shu, Liu, Gao, Yan & Shen, ICCV 2021, "Channel-wise Knowledge Distillation for
Dense Prediction", Sec. 3.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss
from .spatial import match_spatial

__all__ = ["channel_distribution", "cwd_loss"]


def channel_distribution(feature: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """phi(y_c) of the paper: each channel's map turned into a distribution over its H * W positions by a softmax
    at temperature ``tau``: (N, C, H, W) -> (N, C, H * W), each row summing to 1; float32."""
    return F.softmax(feature.float().flatten(2) / tau, dim=2)


@float32_loss
def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """tau^2 / (N * C) * sum over images n and channels c of KL(phi(T_nc / tau) || phi(S_nc / tau)), each KL
    summed over the H * W positions.

    The paper's divergence (Sec. 3.2) is tau^2 / C * sum_c sum_i phi(y^T_c,i) log(phi(y^T_c,i) / phi(y^S_c,i))
    for one image, phi the spatial softmax of each channel at temperature tau; the authors' code (TorchDistiller
    ``SemSeg-distill/utils/criterion.py`` ``CriterionCWD`` with ``norm_type='channel'``, mmrazor's
    ``ChannelWiseDivergence``) sums it over the batch too and divides by N * C: the mean over images and channels.
    Maps of two sizes (the authors' code asserts equal ones): the larger is average-pooled to the smaller's
    (:func:`~mgd.losses.spatial.match_spatial`). The teacher receives no gradient. Computed in float32 (log-space,
    exact where a probability underflows) whatever the inputs' dtype.
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"cwd_loss compares (N, C, H, W) maps, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    student, teacher = match_spatial(student, teacher)
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in batch or "
                         "channels; map the student's channels to the teacher's first (a 1x1 connector)")
    n, c = student.shape[:2]
    log_s = F.log_softmax(student.float().flatten(2) / tau, dim=2)
    log_t = F.log_softmax(teacher.detach().float().flatten(2) / tau, dim=2)
    kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    return kl * (tau ** 2) / (n * c)
