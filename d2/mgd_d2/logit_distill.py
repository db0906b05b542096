"""Logit distillation of a Faster R-CNN's box head (KD, DKD): the student's class logits of the proposals its
ROI heads sampled, against the teacher's box head run on those same proposals over the teacher's own
features, as mdistiller's detection code does (its ``forward_pure_roi_head``). The losses themselves are the
library's (:mod:`mgd.losses`)."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List

import torch
from torch import nn

from detectron2.structures import Instances

from mgd.losses import kd_loss
from mgd.losses.dkd import dkd_loss

#: loss(student logits, teacher logits, ground-truth classes of the proposals) -> scalar
LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def box_logit_loss(cfg) -> LogitLoss:
    """MGD.DISTILLER "kd" or "dkd" with its MGD.KD.* / MGD.DKD.* settings."""
    if cfg.MGD.DISTILLER == "kd":
        weight, temperature = float(cfg.MGD.KD.WEIGHT), float(cfg.MGD.KD.TEMPERATURE)
        return lambda s, t, gt: weight * kd_loss(s, t, temperature)
    if cfg.MGD.DISTILLER == "dkd":
        k = cfg.MGD.DKD
        return lambda s, t, gt: dkd_loss(s, t, gt, alpha=float(k.ALPHA), beta=float(k.BETA),
                                         temperature=float(k.TEMPERATURE))
    raise ValueError(f"no logit loss for MGD.DISTILLER {cfg.MGD.DISTILLER!r}; valid: kd, dkd")


@contextlib.contextmanager
def capture_outputs(modules: Dict[str, nn.Module]) -> Iterator[Dict[str, object]]:
    """The output of each named module's last call inside the ``with`` block (forward hooks, removed after)."""
    out: Dict[str, object] = {}
    handles = [m.register_forward_hook(lambda mod, inp, res, key=key: out.__setitem__(key, res))
               for key, m in modules.items()]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def teacher_box_logits(roi_heads: nn.Module, features: Dict[str, torch.Tensor],
                       proposals: List[Instances]) -> torch.Tensor:
    """The class logits of a StandardROIHeads' box head for ``proposals`` (no sampling, no post-processing)."""
    feats = [features[f] for f in roi_heads.box_in_features]
    boxes = roi_heads.box_head(roi_heads.box_pooler(feats, [p.proposal_boxes for p in proposals]))
    return roi_heads.box_predictor(boxes)[0]
