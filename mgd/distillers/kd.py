"""``kd``: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network" (Sec. 2); with
``nd_weight`` > 0, KD++ (Wang et al., ICCV 2023) as its authors train it; with ``logit_standardize``, KD with logit
standardization (Sun et al., CVPR 2024) as its authors train it on CIFAR-100."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..losses import kd_loss
from ..registry import register_distiller
from .logits import LogitDistiller

__all__ = ["KDDistiller", "LS_TEMPERATURE", "LS_KD_WEIGHT"]

#: KD+LS on CIFAR-100 (the authors' ``tools/train.py`` defaults ``--base-temp 2 --kd-weight 9``): the base
#: temperature and the KD term's weight beside a cross-entropy of weight 1.
LS_TEMPERATURE = 2.0
LS_KD_WEIGHT = 9.0


@register_distiller("kd")
class KDDistiller(LogitDistiller):
    """Hinton's KD: alpha T^2 KL(softmax(t/T) || softmax(s/T)), the cross-entropy with weight 1 - alpha
    (Hinton et al. 2015, Sec. 2; alpha 0.9, T 4 as in the CRD benchmark code most toolkits follow).

    With ``nd_weight`` > 0, KD++ as its authors train it: CE (weight 1) + ``kd_weight`` (1) * T^2 KL, ramped
    in over ``warmup_epochs`` (20 on CIFAR-style runs, 5 on ImageNet, where T is 1) + the ND term; ``alpha``
    is then unused.

    With ``logit_standardize`` (KD+LS), the authors' CIFAR-100 recipe (sunshangquan/logit-standardization-KD,
    ``tools/train.py --logit-stand --base-temp 2 --kd-weight 9`` over ``mdistiller/engine/cfg.py``'s KD
    CE_WEIGHT 1): CE (weight 1) + ``kd_weight`` (9) * T^2 KL(softmax(Z(t)/T) || softmax(Z(s)/T)) at the base
    temperature T 2, no warm-up (their KD has none); ``alpha`` is then unused. (The README's log names give the
    base temperature and weight of each pair: 2 and 9 for most, 3 for some, e.g. VGG13 -> VGG8.)

    Args:
        alpha: weight of the KD term; the cross-entropy keeps 1 - alpha (0.9).
        temperature: the softmax temperature T (4; with logit_standardize 2, the authors' base temperature).
        kd_weight: with ``nd_weight`` > 0 (KD++'s recipe) or ``logit_standardize`` (KD+LS), the weight of the KD
            term beside a cross-entropy of weight 1 (KD++: 1; with logit_standardize: 9, the authors' --kd-weight).
    """

    cli_options = LogitDistiller.cli_options + ("alpha", "temperature", "kd_weight")

    dense_outputs = True  # pixel-wise on a segmenter's (N, C, H, W) logits (without the ND term)
    one_based_warmup = False  # KD++'s code: min(epoch / warmup, 1) with 0-based epochs

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: float = 0.9, temperature: Optional[float] = None,
                 kd_weight: Optional[float] = None, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        if temperature is None:
            temperature = LS_TEMPERATURE if self.logit_standardize else 4.0
        if kd_weight is None:
            kd_weight = LS_KD_WEIGHT if self.logit_standardize else 1.0
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"kd temperature must be positive, got {temperature}")
        self.alpha, self.temperature, self.kd_weight = float(alpha), float(temperature), float(kd_weight)
        self.task_weight = 1.0 if self.nd_weight > 0 or self.logit_standardize else 1.0 - self.alpha

    def logit_losses(self, s_out, t_out, target):
        if self.nd_weight > 0:
            return {"kd": self.ramp() * self.kd_weight * kd_loss(s_out, t_out, self.temperature)}
        if self.logit_standardize:  # KD+LS: CE 1 + kd_weight * T^2 KL, no warm-up
            return {"kd": self.kd_weight * kd_loss(s_out, t_out, self.temperature)}
        return {"kd": self.alpha * kd_loss(s_out, t_out, self.temperature)}
