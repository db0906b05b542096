"""The logit methods behind the one contract, each with KD++'s ND term as its "++" (``nd_weight`` > 0).

* ``kd``: Hinton et al. 2015, (1 - alpha) CE + alpha T^2 KL (alpha 0.9, T 4). With ``nd_weight`` > 0 it
  trains KD++ as its authors do (below); ``nd`` is that recipe by name.
* ``dkd``: Decoupled KD (Zhao et al., CVPR 2022), CE + min(epoch / warmup, 1) * (alpha TCKD + beta NCKD).
* ``dist``: DIST (Huang et al., NeurIPS 2022), CE + 2 * tau^2 (beta inter + gamma intra).

The "++" recipe (KD++, Wang et al., ICCV 2023; the authors' CIFAR code, ``train_cifar_kd.py``): CE with
weight 1, the method's own term (KD: weight 1 and T 4, ramped in linearly over ``warmup_epochs``), and
``nd_weight`` * ND on the penultimate embeddings, the teacher's class means computed once by ``prepare``.

Logit standardization (Sun et al., CVPR 2024; ``logit_standardize``, the shared flag ``--logit-standardize``) is a
modifier of every logit method, as ``nd_weight`` is: both networks' logits are z-scored per sample
(:func:`mgd.losses.logit_standardization.standardize_logits`) before the method's temperature softmax, and the
methods take the authors' weights and base temperature where theirs differ (their ``tools/train.py``: kd's KD
weight 9 at T 2 beside a cross-entropy of weight 1; dkd's alpha and beta times 9 at T 2). The authors apply it to
KD, DKD (and MLKD, CTKD); on DIST it is our extension, with DIST's own weights. Off (the default), every method
computes exactly what it computed before the option existed.

Warm-ups follow the epoch the training loop announces with :meth:`~mgd.distillers.base.Distiller.set_epoch` (0-based):
DKD's ``min((epoch + 1) / warmup, 1)`` is mdistiller's 1-based ``min(epoch / warmup, 1)``; KD++'s code ramps
``min(epoch / warmup, 1)`` from 0-based epochs, so its KD term is off in the first epoch.
"""
from __future__ import annotations

import logging
from typing import Optional

from torch import nn

from ..features import embedding_layer, embedding_spec
from ..losses.logit_standardization import standardize_logits
from .base import Distiller
from .nd_term import NDTerm

logger = logging.getLogger("mgd")

__all__ = ["LogitDistiller", "linear_warmup"]


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
    named by ``teacher_embedding`` / ``student_embedding``).

    Args:
        warmup_epochs: epochs over which the method's term ramps in linearly (KD++'s and DKD's CIFAR
            setting 20; their ImageNet settings: KD++ 5, DKD 1); 0: no ramp.
        nd_weight: > 0 adds KD++'s ND loss on the penultimate embeddings with this weight (the "++" of the
            method, trained with the KD++ recipe); 0: the method alone.
        ramp_nd: 1 ramps the ND term in with the method's term over ``warmup_epochs``, as KD++'s ImageNet
            DKD++ (``ImageNet/train_dkd.py``); 0 (its CIFAR code) adds it at full weight from the start.
        logit_standardize: 1 z-scores both networks' logits per sample (minus their mean, divided by 1e-7 +
            their standard deviation over the classes) before the temperature softmax: logit standardization
            (Sun et al., CVPR 2024), with the authors' weights and base temperature where the method's own
            differ (kd: KD weight 9 at T 2, cross-entropy weight 1; dkd: alpha 9, beta 72, T 2); 0 (default): off.
    """

    needs_features = False
    cli_options = ("warmup_epochs", "nd_weight", "ramp_nd", "logit_standardize")
    #: Whether the method's term ramps in over ``warmup_epochs`` (and from which epoch count).
    one_based_warmup = True

    def __init__(self, t_net: nn.Module, s_net: nn.Module, *, nd_weight: float = 0.0, warmup_epochs: float = 20,
                 num_classes: Optional[int] = None, teacher_embedding: Optional[str] = None,
                 student_embedding: Optional[str] = None, ramp_nd: bool = False, logit_standardize: bool = False,
                 **kwargs) -> None:
        self.ramp_nd = bool(ramp_nd)
        self.logit_standardize = bool(logit_standardize)
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
        """The term's warm-up factor: mdistiller's 1-based count for the method alone, KD++'s 0-based count
        (``train_cifar_dkd.py``, ``DIST++/train_dist.py``: ``min(epoch / warm_up, 1)``) for its "++"."""
        return linear_warmup(self.epoch, self.warmup_epochs, self.one_based_warmup and not self.nd_weight > 0)

    def logit_losses(self, s_out, t_out, target) -> dict:
        raise NotImplementedError

    def standardize(self, s_out, t_out):
        """Both networks' logits z-scored per sample (``logit_standardize``), in float32; the teacher's detached.
        An output that is a tuple of logits (a student with two heads) has each of them standardised."""
        def each(out, detach):
            if isinstance(out, (tuple, list)):
                return type(out)(each(o, detach) for o in out)
            return standardize_logits(out.detach() if detach else out)
        return each(s_out, False), each(t_out, True)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        if self.logit_standardize:
            s_out, t_out = self.standardize(s_out, t_out)
        out = self.logit_losses(s_out, t_out, target)
        if self.nd_weight > 0:
            nd = self.nd_term(s_feats[-1], t_feats[-1], target)
            out["nd"] = self.ramp() * nd if self.ramp_nd else nd
        return out
