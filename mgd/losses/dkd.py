"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["dkd_loss"]


def _kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Element-wise q (log q - log p), 0 where q is 0 (a class the teacher rules out), never 0 * inf."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))


@float32_loss
def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD (Eq. 7 of the paper), each a KL divergence times T^2 averaged over the batch.

    TCKD is the KL between the binary distributions [p_target, 1 - p_target] of teacher and student (Eq. 2);
    NCKD the KL between their softmaxes over the non-target classes only (Eq. 3, the target removed and the
    rest renormalised). Defaults: the authors' CIFAR-100 setting (alpha 1, beta 8, T 4; on ImageNet they use
    beta 0.5 and T 1 for ResNet-34 -> ResNet-18, beta 2 for ResNet-50 -> MobileNet-V1).

    Everything is computed from log-softmaxes and log-sum-exps, so a probability that underflows (a target
    logit ahead by 100) gives a finite loss and finite gradients: no log of a zero.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    is_target = F.one_hot(target, s.shape[1]).bool()
    log_ps, log_pt = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)

    def binary(log_p: torch.Tensor) -> torch.Tensor:  # log [p_target, p_non-target], from log-probabilities
        target_part = log_p.masked_fill(~is_target, float("-inf")).logsumexp(1)
        other_part = log_p.masked_fill(is_target, float("-inf")).logsumexp(1)
        return torch.stack([target_part, other_part], dim=1)

    tckd = _kl(binary(log_pt), binary(log_ps)).sum() / s.shape[0]
    # non-target classes: the target's logit to -inf, renormalised over the others; its KL entry is 0
    log_ps_nt = F.log_softmax(s.masked_fill(is_target, float("-inf")), dim=1)
    log_pt_nt = F.log_softmax(t.masked_fill(is_target, float("-inf")), dim=1)
    nckd = _kl(log_pt_nt, log_ps_nt.masked_fill(is_target, 0.0)).sum() / s.shape[0]
    return (alpha * tckd + beta * nckd) * temperature ** 2
