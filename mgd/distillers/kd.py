"""``kd``: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network" (Sec. 2); with
``nd_weight`` > 0, KD++ (Wang et al., ICCV 2023) as its authors train it."""
from __future__ import annotations

from torch import nn

from ..losses import kd_loss
from ..registry import register_distiller
from .logits import LogitDistiller

__all__ = ["KDDistiller"]


@register_distiller("kd")
class KDDistiller(LogitDistiller):
    """Hinton's KD: alpha T^2 KL(softmax(t/T) || softmax(s/T)), the cross-entropy with weight 1 - alpha
    (Hinton et al. 2015, Sec. 2; alpha 0.9, T 4 as in the CRD benchmark code most toolkits follow).

    With ``nd_weight`` > 0, KD++ as its authors train it: CE (weight 1) + ``kd_weight`` (1) * T^2 KL, ramped
    in over ``warmup_epochs`` (20 on CIFAR-style runs, 5 on ImageNet, where T is 1) + the ND term; ``alpha``
    is then unused.

    Args:
        alpha: weight of the KD term; the cross-entropy keeps 1 - alpha (0.9).
        temperature: the softmax temperature T (4).
        kd_weight: with ``nd_weight`` > 0 (KD++'s recipe), the weight of the KD term beside a cross-entropy of
            weight 1 (1).
    """

    cli_options = LogitDistiller.cli_options + ("alpha", "temperature", "kd_weight")

    dense_outputs = True  # pixel-wise on a segmenter's (N, C, H, W) logits (without the ND term)
    one_based_warmup = False  # KD++'s code: min(epoch / warmup, 1) with 0-based epochs

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: float = 0.9, temperature: float = 4.0,
                 kd_weight: float = 1.0, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"kd temperature must be positive, got {temperature}")
        self.alpha, self.temperature, self.kd_weight = float(alpha), float(temperature), float(kd_weight)
        self.task_weight = 1.0 if self.nd_weight > 0 else 1.0 - self.alpha

    def logit_losses(self, s_out, t_out, target):
        if self.nd_weight > 0:
            return {"kd": self.ramp() * self.kd_weight * kd_loss(s_out, t_out, self.temperature)}
        return {"kd": self.alpha * kd_loss(s_out, t_out, self.temperature)}
