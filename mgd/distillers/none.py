"""``none``: plain training behind the one contract (mdistiller's ``Vanilla``): the student alone, no term.

An application that trains through the contract then needs no "is there a distiller?" branch: its step is
``logits, terms = d.forward_train(images, target)``, ``loss = d.task_weight * task_loss + sum(terms.values())``
whatever the method, and with ``none`` that is exactly the student's own training step.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..registry import register_distiller
from .base import Distiller

__all__ = ["NoDistiller"]


class _NoTeacher(nn.Module):
    """Stands where a teacher would be: it has no parameters and is never run."""

    def forward(self, *args: Any) -> None:
        raise RuntimeError("plain training ('none') has no teacher to run")


@register_distiller("none")
class NoDistiller(Distiller):
    """No distillation: ``forward_train`` is the student's forward and no term; no state of its own.

    Args:
        t_net: ignored (None is accepted: plain training needs no teacher); it is never run.
        s_net: the student.
    """

    dense_outputs = True
    needs_features = False
    needs_teacher = False

    def __init__(self, t_net: Optional[nn.Module], s_net: nn.Module, **kwargs) -> None:
        super().__init__(_NoTeacher(), s_net, **kwargs)

    def run_networks(self, images: torch.Tensor) -> Tuple[Any, Any, Any, Any]:
        return None, None, None, self.s_net(images)

    def losses(self, s_feats, t_feats, s_out, t_out, target) -> Dict[str, torch.Tensor]:
        return {}
