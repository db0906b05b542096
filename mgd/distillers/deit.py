"""``deit``: distillation through the distillation token (Touvron et al., ICML 2021, "Training data-efficient
image transformers & distillation through attention", Sec. 5); with ``nd_weight`` > 0, DeiT++ as KD++ trains it
(Wang et al., ICCV 2023, the CNN -> ViT table).

The student is a ViT with a distillation token and its own head (timm's ``deit_*_distilled_*``,
``VisionTransformerDistilled``): in training it returns the class head's and the distillation head's logits,
in eval mode their mean, which is how DeiT evaluates it (``forward_head``: ``(x + x_dist) / 2``), so an
application evaluates the student as it does any classifier. The class head learns from the labels, the
distillation head from the teacher (a CNN: RegNetY in the paper):

* hard-label distillation (the paper's Eq. 3 and its default, DeiT ``losses.py`` ``DistillationLoss``:
  ``distillation_type='hard'``): ``(1 - alpha) CE(class head, y) + alpha CE(distillation head, argmax t)``,
  alpha 0.5 (``main.py --distillation-alpha 0.5``);
* soft distillation (Eq. 2, ``distillation_type='soft'``): the distillation term is
  ``tau^2 KL(softmax(t / tau) || softmax(s_dist / tau))`` summed and divided by the number of logits
  (batch x classes), as ``losses.py`` does, tau 1 (``--distillation-tau 1.0``);
* DeiT++ (KD++, ``ImageNet/DeiT/train_launch_distilled.py``): ``CE(class head, y) + kd_weight * min(1,
  epoch / warm-up) * tau^2 KL(batchmean)(distillation head, t) + ND`` on the distillation token's embedding
  (the input of ``head_dist``) against the teacher's class means; its command: ``--kd_loss_factor 0.5
  --nd_loss_factor 1.5``.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from ..features.spec import unwrap
from ..losses import kd_loss
from ..losses.deit import deit_distillation_loss
from ..registry import register_distiller
from .logits import LogitDistiller

__all__ = ["DeiTDistiller"]


@register_distiller("deit")
class DeiTDistiller(LogitDistiller):
    """DeiT's distillation token: the class head learns from the labels, the distillation head from the
    teacher; evaluation on the mean of both heads (timm's eval-mode output). ``nd_weight`` > 0: DeiT++.

    Args:
        distillation_type: ``hard`` (the teacher's arg-max class, DeiT's default) or ``soft`` (its tempered
            softmax).
        alpha: weight of the distillation head's term; the class head's cross-entropy keeps 1 - alpha (0.5).
        tau: the soft distillation's temperature (1).
        kd_weight: with ``nd_weight`` > 0 (DeiT++, KD++'s recipe), the weight of the distillation head's
            soft term beside a cross-entropy of weight 1 (0.5).
    """

    cli_options = LogitDistiller.cli_options + ("distillation_type", "alpha", "tau", "kd_weight")
    one_based_warmup = False  # KD++'s min(epoch / warm_up, 1), 0-based epochs (DeiT itself has no ramp)
    student_heads = 2  # the class head and the distillation head

    def __init__(self, t_net: nn.Module, s_net: nn.Module, distillation_type: Literal["hard", "soft"] = "hard",
                 alpha: float = 0.5, tau: float = 1.0, kd_weight: float = 0.5, warmup_epochs: float = 0,
                 **kwargs) -> None:
        student = unwrap(s_net)
        if not callable(getattr(student, "set_distilled_training", None)):
            raise ValueError(f"deit needs a student with a distillation token (timm's deit_*_distilled_* models, "
                             f"e.g. timm/deit_tiny_distilled_patch16_224), got {type(student).__name__}")
        if distillation_type not in ("hard", "soft"):
            raise ValueError(f"distillation_type must be 'hard' or 'soft', got {distillation_type!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"deit alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"deit tau must be positive, got {tau}")
        kwargs.setdefault("student_embedding", "head_dist")  # DeiT++: the distillation token's embedding
        super().__init__(t_net, s_net, warmup_epochs=warmup_epochs, **kwargs)
        self._was_distilled_training = bool(getattr(student, "distilled_training", False))
        student.set_distilled_training(True)  # training: both heads' logits; eval: their mean
        self.distillation_type, self.alpha, self.tau, self.kd_weight = distillation_type, float(alpha), float(tau), \
            float(kd_weight)
        self.task_weight = 1.0 if self.nd_weight > 0 else 1.0 - self.alpha

    def close(self) -> None:
        """As every distiller's, and the student's ``distilled_training`` flag back as it was."""
        super().close()
        unwrap(self.s_net).set_distilled_training(self._was_distilled_training)

    @staticmethod
    def _heads(s_out):
        """(class head, distillation head) logits: a tuple in training, the one mean tensor in eval mode."""
        return tuple(s_out) if isinstance(s_out, (tuple, list)) else (s_out, s_out)

    def forward_train(self, images, target=None, indices=None):
        t_feats, t_out, s_feats, s_out = self.run_networks(images)
        terms = self.compute_terms(student_features=s_feats, teacher_features=t_feats, student_logits=s_out,
                                   teacher_logits=t_out, target=target, indices=indices)
        return self._heads(s_out)[0], terms  # the task loss is the class head's

    def logit_losses(self, s_out, t_out, target):
        dist_logits = self._heads(s_out)[1]
        if self.nd_weight > 0:
            return {"deit": self.ramp() * self.kd_weight * kd_loss(dist_logits, t_out, self.tau)}
        return {"deit": self.alpha * deit_distillation_loss(dist_logits, t_out, self.distillation_type, self.tau)}
