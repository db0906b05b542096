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
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as mdist
from .features import unwrap

__all__ = ["calibrate_loss_factor", "DEFAULT_LOSS_RATIO", "DEFAULT_CALIBRATION_IMAGES"]

logger = logging.getLogger("mgd")

#: The distillation term starts at this multiple of the task loss: measured in docs/matching.md (the best
#: fixed factors started at 0.55-5.5x the cross-entropy at 28 px and at 2.4x at 56 px; 0.5 was lower than both).
DEFAULT_LOSS_RATIO = 2.0
#: Images measured (over all processes).
DEFAULT_CALIBRATION_IMAGES = 512

#: ``task_loss(student output, target)``: the loss the distillation term is weighed against.
TaskLoss = Callable[[Any, Any], torch.Tensor]
#: ``measure(batch) -> (distillation term before the factor, task loss, images)`` (means over the batch).
Measure = Callable[[Any], Tuple[float, float, int]]


def _cross_entropy(logits: Any, target: Optional[torch.Tensor]) -> torch.Tensor:
    if target is None:
        raise ValueError("the default task loss (cross-entropy) needs (images, targets) batches; pass task_loss=")
    return F.cross_entropy(logits.float(), target)


def _split(batch: Any):
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _norm_statistics(modules: Iterable[nn.Module]) -> Dict[torch.Tensor, torch.Tensor]:
    """Copies of the running statistics of every BatchNorm among ``modules`` (and their children), keyed by
    the buffer itself, so that a measurement in training mode can put them back."""
    saved: Dict[torch.Tensor, torch.Tensor] = {}
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                    if buf is not None:
                        saved[buf] = buf.detach().clone()
    return saved


def calibrate_loss_factor(distiller: nn.Module, loader: Iterable, task_loss: TaskLoss = _cross_entropy,
                          ratio: float = DEFAULT_LOSS_RATIO, max_images: int = DEFAULT_CALIBRATION_IMAGES,
                          measure: Optional[Measure] = None) -> float:
    """The loss factor that makes ``distiller``'s factor-scaled terms (``distiller.factor_terms``, e.g.
    MGD's "distill") start at ``ratio`` times ``task_loss(student output, target)``, measured on at most
    ``max_images`` images of ``loader`` (over all processes) with the student in training mode, as in the
    first steps (the BatchNorm statistics of the student and the distiller are restored afterwards) and no
    gradients. The distiller's own factor is not changed: ``set_loss_factor`` does that.

    ``measure(batch) -> (distillation term, task loss, images)`` replaces the default measurement (the
    distiller's ``forward_train`` and ``task_loss``) where the task is not "student(images) vs target", e.g. a
    detector whose losses come out of its own forward; it is called with the factor set to 1.
    """
    d = unwrap(distiller)
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be a positive number, got {ratio!r}")
    device = next(iter(d.buffers())).device
    per_rank = math.ceil(max_images / mdist.get_world_size())
    saved = _norm_statistics([d, d.s_net])
    previous, was_training = d.loss_factor, d.training
    d.loss_factor = 1.0
    d.train()

    def forward_train(batch):
        images, target = _split(batch)
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True) if isinstance(target, torch.Tensor) else target
        output, terms = d.forward_train(images, target)
        return sum(float(terms[k]) for k in d.factor_terms), float(task_loss(output, target)), images.shape[0]

    measure = measure or forward_train
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # distill, task (both x images), images
    try:
        with torch.no_grad():
            for batch in loader:
                if sums[2] >= per_rank:
                    break
                distill, task, n = measure(batch)
                sums += torch.tensor([float(distill) * n, float(task) * n, n], dtype=torch.float64, device=device)
    finally:
        d.loss_factor = previous
        d.train(was_training)
        with torch.no_grad():
            for buf, value in saved.items():
                buf.copy_(value)
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
