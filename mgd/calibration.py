"""A loss factor that calibrates itself: the partial L2 is a sum over elements, so its size grows with the
input resolution, the widths and the depth, and a factor right at 224 px (the original's 1e4) is wrong at
32 px. OFD's authors answered it per setting (1e-3 for 32 px, 1e-4 for 224 px, 1e-5 for detection); MGD's
detection README says to pick factors "so each stage's loss starts around 0.0x".

:func:`calibrate_loss_factor` measures, on the first images with the untrained student (and, for MGD, the
first matching), the mean distillation term before the factor and the mean task loss, and returns the
factor that makes the distillation term start at ``ratio`` times the task loss. The sums are all-reduced,
so every process gets the same factor.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as mdist
from .features import unwrap

__all__ = ["calibrate_loss_factor", "DEFAULT_LOSS_RATIO", "DEFAULT_CALIBRATION_IMAGES"]

logger = logging.getLogger("mgd")

#: The distillation term starts at this multiple of the task loss (see the README's evidence).
DEFAULT_LOSS_RATIO = 0.5
#: Images measured (over all processes).
DEFAULT_CALIBRATION_IMAGES = 512

TaskLoss = Callable[[Any, Optional[torch.Tensor]], torch.Tensor]


def _cross_entropy(logits: Any, target: Optional[torch.Tensor]) -> torch.Tensor:
    if target is None:
        raise ValueError("the default task loss (cross-entropy) needs (images, targets) batches; pass task_loss=")
    return F.cross_entropy(logits.float(), target)


def _split(batch: Any):
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def calibrate_loss_factor(distiller: nn.Module, loader: Iterable, task_loss: TaskLoss = _cross_entropy,
                          ratio: float = DEFAULT_LOSS_RATIO, max_images: int = DEFAULT_CALIBRATION_IMAGES) -> float:
    """The loss factor that makes ``distiller``'s factor-scaled terms (``distiller.factor_terms``, e.g.
    MGD's "distill") start at ``ratio`` times ``task_loss(student output, target)``, measured on at most
    ``max_images`` images of ``loader`` (over all processes) with the student in training mode, as in the
    first steps (its BatchNorm statistics are restored afterwards) and no gradients. The distiller's own
    factor is not changed: :meth:`~mgd.feature_distiller.PartialL2Distiller.set_loss_factor` does that.
    """
    d = unwrap(distiller)
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be a positive number, got {ratio!r}")
    device = next(iter(d.buffers())).device
    per_rank = math.ceil(max_images / mdist.get_world_size())
    saved = {k: v.clone() for k, v in d.s_net.state_dict().items() if not v.is_floating_point() or "running" in k}
    previous, was_training = d.loss_factor, d.training
    d.loss_factor = 1.0
    d.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # distill, task (both x images), images
    try:
        with torch.no_grad():
            for batch in loader:
                if sums[2] >= per_rank:
                    break
                images, target = _split(batch)
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True) if isinstance(target, torch.Tensor) else target
                output, terms = d.forward_train(images, target)
                n = images.shape[0]
                sums[0] += sum(float(terms[k]) for k in d.factor_terms) * n
                sums[1] += float(task_loss(output, target)) * n
                sums[2] += n
    finally:
        d.loss_factor = previous
        d.train(was_training)
        d.s_net.load_state_dict(saved, strict=False)
    mdist.all_reduce_sum(sums)
    if sums[2] == 0:
        raise ValueError("the loss-factor calibration saw no images: the loader is empty")
    distill, task = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()
    if not (math.isfinite(distill) and math.isfinite(task) and distill > 0 and task > 0):
        raise ValueError(f"cannot calibrate the loss factor: distillation term {distill:.4g}, task loss {task:.4g} "
                         "(both must be positive and finite); give a fixed loss factor")
    factor = distill / (ratio * task)
    logger.info("loss factor calibrated on %d image(s): distillation term %.4g (before the factor), task loss "
                "%.4g, ratio %g -> loss factor %.4g", int(sums[2].item()), distill, task, ratio, factor)
    return factor
