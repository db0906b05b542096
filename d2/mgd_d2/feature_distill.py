"""Feature distillation of a detector's backbone through the library's one contract: any feature method
(:func:`mgd_d2.config.feature_methods`: mgd, sm, ofd, at, sp, another package's) built by
:func:`mgd.build_distiller` on the teacher's and the student's bottom-up networks, at the pre-ReLU C2-C5 of a
ResNet (the input of each stage's last ReLU: MGD's positions, and OFD's "pre-ReLU at the end of each stage",
Heo et al. 2019, Sec. 3.3) or mgd's four MobileNetV2 positions (:mod:`mgd_d2.mobilenet`), its terms from
:meth:`mgd.Distiller.compute_terms` on the captured features. Shared by every meta-architecture of
:mod:`mgd_d2.meta_arch`."""
from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn

from detectron2.layers import NaiveSyncBatchNorm

import mgd
from mgd.distillers.base import Distiller
from mgd.registry import distiller_options

from .backbone import stage_specs

logger = logging.getLogger("detectron2")


def build_feature_distiller(cfg, teacher_bottom_up: nn.Module, student_bottom_up: nn.Module) -> Distiller:
    """``mgd.build_distiller(cfg.MGD.DISTILLER, ...)`` with the MGD.* options the method takes (filtered by the
    registry's signature: OFD has no reducer nor solver, AT no loss factor). Level i is weighted by
    1 / MGD.LOSS_FACTORS[i] (0: not distilled) where the method takes ``stage_weights``; ``loss_factor`` is 1 or
    "auto" (MGD.LOSS_FACTOR), the networks stay the detectors'. ValueError when MGD.IGNORE_INDS lists levels and
    the method cannot skip any (it takes no ``ignore_inds``)."""
    name = cfg.MGD.DISTILLER
    factors = list(cfg.MGD.LOSS_FACTORS)
    if len(factors) != 4:
        raise ValueError(f"MGD.LOSS_FACTORS needs 4 values (C2-C5), got {factors}")
    candidates = dict(
        teacher_layers=stage_specs(teacher_bottom_up), student_layers=stage_specs(student_bottom_up),
        own_networks=False, ignore_inds=list(cfg.MGD.IGNORE_INDS),
        stage_weights=[0.0 if f == 0 else 1.0 / f for f in factors],
        loss_factor="auto" if cfg.MGD.LOSS_FACTOR == "auto" else 1.0, loss_ratio=cfg.MGD.LOSS_RATIO,
        calibration_images=cfg.MGD.CALIBRATION_IMAGES,
        # each matching tracks MGD.UPDATE_ITER batches of SOLVER.IMS_PER_BATCH images (over all processes)
        update_images=cfg.MGD.UPDATE_ITER * cfg.SOLVER.IMS_PER_BATCH,
        # MGD only (Yue et al. 2020's detection settings: GroupNorm(32) student side unless SyncBN)
        reducer=cfg.MGD.REDUCER, sync_bn=cfg.MGD.SYNC_BN, preReLU=cfg.MGD.PRERELU, det=True,
        solver=cfg.MGD.SOLVER, student_norm=NaiveSyncBatchNorm if cfg.MGD.SYNC_BN else None)
    accepted = distiller_options(name)
    if cfg.MGD.IGNORE_INDS and "ignore_inds" not in accepted:
        raise ValueError(f"MGD.IGNORE_INDS {list(cfg.MGD.IGNORE_INDS)}: {name} takes no ignore_inds and distils "
                         "every level; leave it empty")
    if "stage_weights" not in accepted:
        logger.info("mgd: %s takes no stage weights: MGD.LOSS_FACTORS %s are not applied", name, factors)
    return mgd.build_distiller(name, teacher_bottom_up, student_bottom_up,
                               **{k: v for k, v in candidates.items() if k in accepted})


def feature_loss(distiller: Distiller, s_feats: List[torch.Tensor], t_feats: List[torch.Tensor],
                 images: int, ims_per_batch: int) -> torch.Tensor:
    """``loss_distill``: the sum of the distiller's terms (:meth:`mgd.Distiller.compute_terms`, float32) for this
    process's ``images``, rescaled from "per image" to "/ SOLVER.IMS_PER_BATCH" as the original divided the
    summed loss (whose LOSS_FACTORS assume it)."""
    terms = distiller.compute_terms(student_features=s_feats, teacher_features=t_feats)
    return sum(terms.values()) * (images / ims_per_batch)
