"""Logit standardization (Sun, Ren, Li, Wang, Cao, CVPR 2024, "Logit Standardization in Knowledge Distillation").

The paper's Z-score pre-process (its Algorithm 1): each sample's logits are shifted by their mean and divided
by their standard deviation over the classes before the temperature softmax of a logit method (KD, DKD, ...),
for the teacher and the student alike, so that the student matches the teacher's logit *relations* rather than
their range and variance. The temperature that follows is then a "base temperature" (2 in the authors' CIFAR-100
commands).

Computed as the authors' ``normalize`` in ``mdistiller/distillers/KD.py`` and ``DKD.py``
(sunshangquan/logit-standardization-KD): the standard deviation is ``torch.std``'s (the unbiased estimate, over
K - 1) and 1e-7 is added to it in the denominator, so that a constant row of logits gives zeros, not NaN.
"""
from __future__ import annotations

import torch

from .precision import float32_loss

__all__ = ["standardize_logits", "LOGIT_STANDARDIZATION_EPS"]

#: Added to the standard deviation before dividing (the authors' ``1e-7 + stdv``).
LOGIT_STANDARDIZATION_EPS = 1e-7


@float32_loss
def standardize_logits(logits: torch.Tensor, eps: float = LOGIT_STANDARDIZATION_EPS) -> torch.Tensor:
    """(z - mean(z)) / (eps + std(z)) over the classes (dim 1) of each sample, in float32.

    ``logits``: (N, K) classifier outputs, or dense (N, K, H, W) ones (a segmenter's), standardised per position.
    ``std`` is the unbiased estimate (divided by K - 1), as ``torch.std`` in the authors' code. Differentiable:
    the student's standardised logits carry its gradient; detach the teacher's before if it has one.
    """
    if logits.dim() < 2 or logits.shape[1] < 2:
        raise ValueError(f"logit standardization needs (N, K, ...) logits with K >= 2 classes, got shape "
                         f"{tuple(logits.shape)}")
    z = logits.float()
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)
    return (z - mean) / (eps + std)
