"""The NCE objective of Contrastive Representation Distillation (Tian et al., ICLR 2020, Eq. 17-19)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["nce_loss"]


@float32_loss
def nce_loss(log_scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """-[log h(pos) + sum_j log(1 - h(neg_j))] averaged over the batch, with
    h(x) = x / (x + K / N) the probability that x comes from the data rather than from K uniform noise
    samples out of N (the paper's Eq. 18, the authors' ``ContrastLoss``).

    ``log_scores``: (B, 1 + K) log of the unnormalised scores exp(<u, v> / tau) / Z, the positive first.
    Computed in log space (log h = -softplus(log(K/N) - log x)), so scores far from K/N stay finite; the
    authors add an epsilon of 1e-7 to the denominators instead.
    """
    if log_scores.dim() != 2 or log_scores.shape[1] < 2:
        raise ValueError(f"log_scores must be (batch, 1 + negatives), got {tuple(log_scores.shape)}")
    log_scores = log_scores.float()
    log_noise = math.log((log_scores.shape[1] - 1) / num_data)  # log(K Pn), Pn = 1 / N
    log_pos = -F.softplus(log_noise - log_scores[:, 0])  # log h(pos)
    log_neg = -F.softplus(log_scores[:, 1:] - log_noise)  # log(1 - h(neg))
    return -(log_pos.sum() + log_neg.sum()) / log_scores.shape[0]
