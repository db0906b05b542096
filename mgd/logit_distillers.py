"""The logit methods behind the one contract, each with KD++'s ND term as its "++" (``nd_weight`` > 0).

* ``kd``: Hinton et al. 2015, (1 - alpha) CE + alpha T^2 KL (alpha 0.9, T 4). With ``nd_weight`` > 0 it
  trains KD++ as its authors do (below); ``nd`` is that recipe by name.
* ``dkd``: Decoupled KD (Zhao et al., CVPR 2022), CE + min(epoch / warmup, 1) * (alpha TCKD + beta NCKD).
* ``dist``: DIST (Huang et al., NeurIPS 2022), CE + 2 * tau^2 (beta inter + gamma intra).

The "++" recipe (KD++, Wang et al., ICCV 2023; the authors' CIFAR code, ``train_cifar_kd.py``): CE with
weight 1, the method's own term (KD: weight 1 and T 4, ramped in linearly over ``warmup_epochs``), and
``nd_weight`` * ND on the penultimate embeddings, the teacher's class means computed once by ``prepare``.

Warm-ups follow the epoch the training loop announces with :meth:`~mgd.base.Distiller.set_epoch` (0-based):
DKD's ``min((epoch + 1) / warmup, 1)`` is mdistiller's 1-based ``min(epoch / warmup, 1)``; KD++'s code ramps
``min(epoch / warmup, 1)`` from 0-based epochs, so its KD term is off in the first epoch.
"""
from __future__ import annotations

import logging
from typing import Optional

from torch import nn

from .base import Distiller
from .embedding import NDTerm, embedding_layer, embedding_spec
from .losses import dist_loss, dkd_loss, kd_loss

logger = logging.getLogger("mgd")

__all__ = ["LogitDistiller", "KDDistiller", "NDDistiller", "DKDDistiller", "DISTDistiller", "linear_warmup"]


_warned_no_epoch = False


def linear_warmup(epoch: Optional[int], warmup_epochs: float, one_based: bool = True) -> float:
    """min(e / warmup, 1) with e the epoch counted from 1 (DKD, ReviewKD in mdistiller) or from 0 (KD++'s
    code); 1 when ``warmup_epochs`` is 0, and (with a warning, once) when no epoch was announced: a loop that
    never calls ``set_epoch`` trains the full term rather than none."""
    global _warned_no_epoch
    if warmup_epochs <= 0:
        return 1.0
    if epoch is None:
        if not _warned_no_epoch:
            _warned_no_epoch = True
            logger.warning("the distiller's warm-up needs the epoch: call d.set_epoch(epoch) before each epoch "
                           "(until then, its term has full weight)")
        return 1.0
    return min((epoch + (1 if one_based else 0)) / warmup_epochs, 1.0)


class LogitDistiller(NDTerm, Distiller):
    """Base of the methods that compare logits: no stage features, only (with ``nd_weight`` > 0) both
    networks' penultimate embeddings, captured at the input of their final linear layers (or the layers
    named by ``teacher_embedding`` / ``student_embedding``)."""

    needs_features = False
    #: Whether the method's term ramps in over ``warmup_epochs`` (and from which epoch count).
    one_based_warmup = True

    def __init__(self, t_net: nn.Module, s_net: nn.Module, *, nd_weight: float = 0.0, warmup_epochs: float = 20,
                 num_classes: Optional[int] = None, teacher_embedding: Optional[str] = None,
                 student_embedding: Optional[str] = None, **kwargs) -> None:
        if nd_weight > 0:
            self.needs_features = True  # the embeddings
            kwargs.update(teacher_layers=[embedding_spec(t_net, teacher_embedding)],
                          student_layers=[embedding_spec(s_net, student_embedding)])
        super().__init__(t_net, s_net, **kwargs)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = float(warmup_epochs)
        if nd_weight > 0:  # (a model without a linear classifier, e.g. a segmenter, takes the logit terms alone)
            self._init_nd(nd_weight, embedding_layer(t_net, teacher_embedding),
                          embedding_layer(s_net, student_embedding), num_classes)
        else:
            self._init_nd(nd_weight, None, None, None)  # 0: off; < 0: an error

    def ramp(self) -> float:
        return linear_warmup(self.epoch, self.warmup_epochs, self.one_based_warmup)

    def logit_losses(self, s_out, t_out, target) -> dict:
        raise NotImplementedError

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        out = self.logit_losses(s_out, t_out, target)
        if self.nd_weight > 0:
            out["nd"] = self.nd_term(s_feats[-1], t_feats[-1], target)
        return out


class KDDistiller(LogitDistiller):
    """Hinton's KD: alpha T^2 KL(softmax(t/T) || softmax(s/T)), the cross-entropy with weight 1 - alpha
    (Hinton et al. 2015, Sec. 2; alpha 0.9, T 4 as in the CRD benchmark code most toolkits follow).

    With ``nd_weight`` > 0, KD++ as its authors train it: CE (weight 1) + ``kd_weight`` (1) * T^2 KL, ramped
    in over ``warmup_epochs`` (20 on CIFAR-style runs, 5 on ImageNet, where T is 1) + the ND term; ``alpha``
    is then unused."""

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


class NDDistiller(KDDistiller):
    """KD++ (Wang et al., ICCV 2023): :class:`KDDistiller` with the ND term on (``nd_weight`` 1, the
    authors' default) and their recipe: CE + KD ramped in over 20 epochs + ND."""

    def __init__(self, t_net: nn.Module, s_net: nn.Module, nd_weight: float = 1.0, **kwargs) -> None:
        if not nd_weight > 0:
            raise ValueError(f"nd (KD++) needs nd_weight > 0, got {nd_weight}; use kd for plain KD")
        super().__init__(t_net, s_net, nd_weight=nd_weight, **kwargs)


class DKDDistiller(LogitDistiller):
    """Decoupled KD: CE + min(epoch / warmup, 1) * :func:`~mgd.losses.dkd_loss` (alpha 1, beta 8, T 4 and
    a 20-epoch warm-up: the authors' CIFAR-100 configs; ImageNet: warm-up 1, beta 0.5 and T 1 for ResNet-34
    -> ResNet-18, beta 2 for ResNet-50 -> MobileNet-V1). ``nd_weight`` > 0: DKD++."""

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


class DISTDistiller(LogitDistiller):
    """DIST: CE + ``weight`` (2) * :func:`~mgd.losses.dist_loss` (beta = gamma = tau = 1): the authors'
    ImageNet recipe; no warm-up. ``nd_weight`` > 0: DIST++."""

    def __init__(self, t_net: nn.Module, s_net: nn.Module, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0,
                 weight: float = 2.0, warmup_epochs: float = 0, **kwargs) -> None:
        super().__init__(t_net, s_net, warmup_epochs=warmup_epochs, **kwargs)
        if tau <= 0:
            raise ValueError(f"dist tau must be positive, got {tau}")
        self.beta, self.gamma, self.tau, self.weight = float(beta), float(gamma), float(tau), float(weight)

    def logit_losses(self, s_out, t_out, target):
        return {"dist": self.ramp() * self.weight * dist_loss(s_out, t_out, self.beta, self.gamma, self.tau)}
