"""Knowledge distillation (Hinton, Vinyals & Dean, 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["kd_loss"]


@float32_loss
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.5) -> torch.Tensor:
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch.

    The T^2 factor keeps the gradient magnitude independent of the temperature (Sec. 2 of the paper).
    Computed in float32 whatever the logits' dtype (autocast). Dense logits (N, C, H, W) (segmentation) are
    distilled per position and averaged over the N * H * W positions (pixel-wise KD, as in the structured KD
    code for segmentation, Liu et al., CVPR 2019), so that the term does not grow with the image size.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    if student_logits.dim() > 2:
        return F.kl_div(log_p, q, reduction="none").sum(1).mean() * temperature ** 2
    return F.kl_div(log_p, q, reduction="batchmean") * temperature ** 2
