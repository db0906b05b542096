"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, Eq. 7): CE + warm-up * (alpha TCKD +
beta NCKD), the authors' (mdistiller) CIFAR-100 configs; ``nd_weight`` > 0 is DKD++."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..losses import dkd_loss
from ..registry import register_distiller
from .logits import LogitDistiller

__all__ = ["DKDDistiller", "LS_WEIGHT_FACTOR", "LS_TEMPERATURE"]

#: DKD+LS (the authors' ``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``): alpha and beta times 9, T 2.
LS_WEIGHT_FACTOR = 9.0
LS_TEMPERATURE = 2.0


@register_distiller("dkd")
class DKDDistiller(LogitDistiller):
    """Decoupled KD: CE + min(epoch / warmup, 1) * :func:`~mgd.losses.dkd_loss` (alpha 1, beta 8, T 4 and
    a 20-epoch warm-up: the authors' CIFAR-100 configs; ImageNet: warm-up 1, beta 0.5 and T 1 for ResNet-34
    -> ResNet-18, beta 2 for ResNet-50 -> MobileNet-V1). ``nd_weight`` > 0: DKD++.

    With ``logit_standardize`` (DKD+LS), the authors' CIFAR-100 recipe (sunshangquan/logit-standardization-KD,
    ``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``, which multiplies the DKD config's alpha and beta
    by the KD weight and sets DKD's T to the base temperature): alpha 9, beta 72, T 2 on the standardised logits,
    the same cross-entropy (weight 1) and 20-epoch warm-up. Values given explicitly are used as given.

    Args:
        alpha: TCKD weight (1; with logit_standardize 9).
        beta: NCKD weight (8; with logit_standardize 72; ImageNet ResNet-34 -> ResNet-18: 0.5, ResNet-50 ->
            MobileNet-V1: 2).
        temperature: the softmax temperature (4; with logit_standardize 2, the authors' base temperature;
            ImageNet 1).
    """

    cli_options = LogitDistiller.cli_options + ("alpha", "beta", "temperature")

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: Optional[float] = None,
                 beta: Optional[float] = None, temperature: Optional[float] = None, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        factor = LS_WEIGHT_FACTOR if self.logit_standardize else 1.0
        alpha = 1.0 * factor if alpha is None else alpha
        beta = 8.0 * factor if beta is None else beta
        if temperature is None:
            temperature = LS_TEMPERATURE if self.logit_standardize else 4.0
        if temperature <= 0:
            raise ValueError(f"dkd temperature must be positive, got {temperature}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def logit_losses(self, s_out, t_out, target):
        if target is None:
            raise ValueError("DKD needs the labels: call forward_train(images, target)")
        return {"dkd": self.ramp() * dkd_loss(s_out, t_out, target, self.alpha, self.beta, self.temperature)}
