"""``dist``: DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher", Eq. 8): the
authors' ImageNet recipe; ``nd_weight`` > 0 is DIST++."""
from __future__ import annotations

from torch import nn

from ..losses import dist_loss
from ..registry import register_distiller
from .logits import LogitDistiller

__all__ = ["DISTDistiller"]


@register_distiller("dist")
class DISTDistiller(LogitDistiller):
    """DIST: CE + ``weight`` (2) * :func:`~mgd.losses.dist_loss` (beta = gamma = tau = 1): the authors'
    ImageNet recipe; no warm-up. ``nd_weight`` > 0: DIST++.

    ``logit_standardize`` z-scores both networks' logits before the softmax at ``tau``, with DIST's own weights:
    our extension (the logit standardization authors apply it to KD, DKD, MLKD and CTKD, not to DIST, and give
    no DIST setting).

    Args:
        beta: weight of the inter-class relation (1).
        gamma: weight of the intra-class relation (1).
        tau: the softmax temperature (1, the ImageNet setting).
        weight: weight of the DIST term beside the cross-entropy (2).
        warmup_epochs: epochs over which the term ramps in linearly (0: none, the authors' ImageNet recipe).
    """

    cli_options = LogitDistiller.cli_options + ("beta", "gamma", "tau", "weight")

    def __init__(self, t_net: nn.Module, s_net: nn.Module, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0,
                 weight: float = 2.0, warmup_epochs: float = 0, **kwargs) -> None:
        super().__init__(t_net, s_net, warmup_epochs=warmup_epochs, **kwargs)
        if tau <= 0:
            raise ValueError(f"dist tau must be positive, got {tau}")
        self.beta, self.gamma, self.tau, self.weight = float(beta), float(gamma), float(tau), float(weight)

    def logit_losses(self, s_out, t_out, target):
        return {"dist": self.ramp() * self.weight * dist_loss(s_out, t_out, self.beta, self.gamma, self.tau)}
