"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, Eq. 7): CE + warm-up * (alpha TCKD +
beta NCKD), the authors' (mdistiller) CIFAR-100 configs; ``nd_weight`` > 0 is DKD++."""
from __future__ import annotations

from torch import nn

from ..losses import dkd_loss
from ..registry import register_distiller
from .logits import LogitDistiller

__all__ = ["DKDDistiller"]


@register_distiller("dkd")
class DKDDistiller(LogitDistiller):
    """Decoupled KD: CE + min(epoch / warmup, 1) * :func:`~mgd.losses.dkd_loss` (alpha 1, beta 8, T 4 and
    a 20-epoch warm-up: the authors' CIFAR-100 configs; ImageNet: warm-up 1, beta 0.5 and T 1 for ResNet-34
    -> ResNet-18, beta 2 for ResNet-50 -> MobileNet-V1). ``nd_weight`` > 0: DKD++.

    Args:
        alpha: TCKD weight (1).
        beta: NCKD weight (8; ImageNet ResNet-34 -> ResNet-18: 0.5, ResNet-50 -> MobileNet-V1: 2).
        temperature: the softmax temperature (4; ImageNet 1).
    """

    cli_options = LogitDistiller.cli_options + ("alpha", "beta", "temperature")

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: float = 1.0, beta: float = 8.0,
                 temperature: float = 4.0, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        if temperature <= 0:
            raise ValueError(f"dkd temperature must be positive, got {temperature}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def logit_losses(self, s_out, t_out, target):
        if target is None:
            raise ValueError("DKD needs the labels: call forward_train(images, target)")
        return {"dkd": self.ramp() * dkd_loss(s_out, t_out, target, self.alpha, self.beta, self.temperature)}
