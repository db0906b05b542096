"""Feature distillation of a detector's backbone through the library's one contract: ``mgd`` or ``ofd`` built by
:func:`mgd.build_distiller` on the teacher's and the student's bottom-up networks, at the pre-ReLU C2-C5 of a
ResNet (the input of each stage's last ReLU: MGD's positions, and OFD's "pre-ReLU at the end of each stage",
Heo et al. 2019, Sec. 3.3) or mgd's four MobileNetV2 positions (:mod:`mgd_d2.mobilenet`). Shared by every
meta-architecture of :mod:`mgd_d2.meta_arch`."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from detectron2.layers import NaiveSyncBatchNorm

import mgd
from mgd.distillers.base import float32_region
from mgd.distillers import distiller_options
from mgd.distillers.partial_l2 import PartialL2Distiller

from .backbone import stage_specs


def build_feature_distiller(cfg, teacher_bottom_up: nn.Module, student_bottom_up: nn.Module) -> PartialL2Distiller:
    """``mgd.build_distiller(cfg.MGD.DISTILLER, ...)`` with the MGD.* options the method takes (the others are
    not passed: OFD has no reducer nor solver). Level i is weighted by 1 / MGD.LOSS_FACTORS[i] (0: not
    distilled); ``loss_factor`` is 1 or "auto" (MGD.LOSS_FACTOR), the networks stay the detectors'."""
    factors = list(cfg.MGD.LOSS_FACTORS)
    if len(factors) != 4:
        raise ValueError(f"MGD.LOSS_FACTORS needs 4 values (C2-C5), got {factors}")
    candidates = dict(
        teacher_layers=stage_specs(teacher_bottom_up), student_layers=stage_specs(student_bottom_up),
        own_networks=False, ignore_inds=list(cfg.MGD.IGNORE_INDS),
        stage_weights=[0.0 if f == 0 else 1.0 / f for f in factors],
        loss_factor="auto" if cfg.MGD.LOSS_FACTOR == "auto" else 1.0, loss_ratio=cfg.MGD.LOSS_RATIO,
        calibration_images=cfg.MGD.CALIBRATION_IMAGES,
        # MGD only (Yue et al. 2020's detection settings: GroupNorm(32) student side unless SyncBN)
        reducer=cfg.MGD.REDUCER, sync_bn=cfg.MGD.SYNC_BN, preReLU=cfg.MGD.PRERELU, det=True,
        solver=cfg.MGD.SOLVER, student_norm=NaiveSyncBatchNorm if cfg.MGD.SYNC_BN else None)
    accepted = distiller_options(cfg.MGD.DISTILLER)
    return mgd.build_distiller(cfg.MGD.DISTILLER, teacher_bottom_up, student_bottom_up,
                               **{k: v for k, v in candidates.items() if k in accepted})


def feature_loss(distiller: PartialL2Distiller, s_feats: List[torch.Tensor], t_feats: List[torch.Tensor],
                 ims_per_batch: int) -> torch.Tensor:
    """``loss_distill``: the distiller's terms (float32) for this process's images, rescaled from "per image"
    to "/ SOLVER.IMS_PER_BATCH" as the original divided the summed loss (whose LOSS_FACTORS assume it).
    A feature method reads only the batch size and device off its ``s_out`` argument: the first distilled
    student feature stands in for it (a detector's output is its loss dict)."""
    first = s_feats[distiller.stages[0]]
    with float32_region(first.device):
        terms = distiller.losses(s_feats, t_feats, first, None, None)
    return sum(terms.values()) * (first.shape[0] / ims_per_batch)
