"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["dist_loss", "pearson_correlation"]


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: the cosine similarity of the
    centred rows (eps in the denominator, as the authors': a constant row correlates 0)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@float32_loss
def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              tau: float = 1.0) -> torch.Tensor:
    """tau^2 * (beta * inter + gamma * intra) on y = softmax(z / tau) (Eq. 6-9 of the paper).

    inter = 1 - the mean Pearson correlation between teacher and student of each sample's class
    probabilities (the rows); intra = the same over the classes (the columns: each class's probabilities
    across the batch). Defaults beta = gamma = tau = 1, the authors' ImageNet setting, where the term is
    added to the cross-entropy with weight 2 (:class:`mgd.distillers.DISTDistiller`).

    The intra term depends on the batch each process sees: under DistributedDataParallel it correlates the
    per-process batch (as the authors' code does), and for a batch of one it is the constant 1 (a column of
    one value has no variance), with no gradient.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    y_s = F.softmax(student_logits.float() / tau, dim=1)
    y_t = F.softmax(teacher_logits.detach().float() / tau, dim=1)
    inter = 1.0 - pearson_correlation(y_s, y_t).mean()
    intra = 1.0 - pearson_correlation(y_s.t(), y_t.t()).mean()
    return tau ** 2 * (beta * inter + gamma * intra)
