"""``nd``: KD++ (Wang et al., ICCV 2023, "Improving Knowledge Distillation via Regularizing Feature Norm and
Direction"): KD with the ND term on, the authors' CIFAR recipe (``train_cifar_kd.py``)."""
from __future__ import annotations

from torch import nn

from ..registry import register_distiller
from .kd import KDDistiller

__all__ = ["NDDistiller"]


@register_distiller("nd")
class NDDistiller(KDDistiller):
    """KD++ (Wang et al., ICCV 2023): :class:`KDDistiller` with the ND term on (``nd_weight`` 1, the
    authors' default) and their recipe: CE + KD ramped in over 20 epochs + ND."""

    dense_outputs = False  # the ND term needs a classifier's embedding
    needs_features = True  # always captures both networks' embeddings (LogitDistiller's instances with nd_weight > 0)
    flag_prefix = "kd"  # KD++ is KD with the ND term: it reads the KD flags (and --nd-weight)

    def __init__(self, t_net: nn.Module, s_net: nn.Module, nd_weight: float = 1.0, **kwargs) -> None:
        if not nd_weight > 0:
            raise ValueError(f"nd (KD++) needs nd_weight > 0, got {nd_weight}; use kd for plain KD")
        super().__init__(t_net, s_net, nd_weight=nd_weight, **kwargs)
