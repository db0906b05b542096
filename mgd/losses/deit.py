"""DeiT's distillation term for the distillation token's head (Touvron et al., ICML 2021, "Training data-efficient
image transformers & distillation through attention", Eq. 2 and 3; facebookresearch/deit ``losses.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["deit_distillation_loss"]


@float32_loss
def deit_distillation_loss(dist_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "hard",
                           tau: float = 1.0) -> torch.Tensor:
    """The distillation head's term (``losses.py``, ``DistillationLoss``): ``hard``, the cross-entropy to the
    teacher's arg-max class (Eq. 3); ``soft``, ``tau^2`` times the KL divergence of the tempered softmaxes summed
    over the batch and divided by its number of logits (Eq. 2). Computed in float32 whatever the autocast dtype."""
    s, t = dist_logits.float(), teacher_logits.detach().float()
    if kind == "hard":
        return F.cross_entropy(s, t.argmax(dim=1))
    if kind != "soft":
        raise ValueError(f"distillation_type must be 'hard' or 'soft', got {kind!r}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    kl = F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction="sum", log_target=True)
    return kl * tau ** 2 / s.numel()
