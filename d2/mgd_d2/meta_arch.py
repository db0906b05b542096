"""MGDRetinaNet: a frozen teacher RetinaNet distilling a trainable student RetinaNet through MGD."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet

import mgd

from .backbone import resnet_stage_specs
from .config import teacher_config



@META_ARCH_REGISTRY.register()
class MGDRetinaNet(nn.Module):
    """Training: the student's RetinaNet losses plus ``loss_distill`` (MGD on the backbones' pre-ReLU
    C2-C5); inference: the student alone. Checkpoint keys: ``student.*`` (a plain RetinaNet under that
    prefix), ``teacher.*``, ``distiller.*`` (matching, margins, student-side norm layers)."""

    def __init__(self, cfg):
        super().__init__()
        student_cfg = cfg.clone()
        student_cfg.defrost()
        student_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        self.student = RetinaNet(student_cfg)
        self.teacher = RetinaNet(teacher_config(cfg))
        self.teacher.requires_grad_(False)
        if cfg.MGD.TEACHER.WEIGHTS:
            DetectionCheckpointer(self.teacher).load(cfg.MGD.TEACHER.WEIGHTS)
        self.ims_per_batch = cfg.SOLVER.IMS_PER_BATCH
        factors = list(cfg.MGD.LOSS_FACTORS)
        if len(factors) != 4:
            raise ValueError(f"MGD.LOSS_FACTORS needs 4 values (C2-C5), got {factors}")
        self.distiller = mgd.MGDistiller(
            self.teacher.backbone.bottom_up, self.student.backbone.bottom_up,
            ignore_inds=list(cfg.MGD.IGNORE_INDS), reducer=cfg.MGD.REDUCER, sync_bn=cfg.MGD.SYNC_BN,
            preReLU=cfg.MGD.PRERELU, det=True,
            teacher_layers=resnet_stage_specs(self.teacher.backbone.bottom_up),
            student_layers=resnet_stage_specs(self.student.backbone.bottom_up),
            stage_weights=[0.0 if f == 0 else 1.0 / f for f in factors], solver=cfg.MGD.SOLVER,
            student_norm=NaiveSyncBatchNorm if cfg.MGD.SYNC_BN else None, own_networks=False)
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self) -> torch.device:
        return self.student.device

    def train(self, mode: bool = True) -> "MGDRetinaNet":
        super().train(mode)
        self.teacher.train(False)  # frozen BN statistics, no dropout: the teacher is a fixed target
        return self

    def _teacher_backbone_features(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        images = self.teacher.preprocess_image(batched_inputs)
        feats, _ = self.distiller.teacher_features(lambda: self.teacher.backbone.bottom_up(images.tensor))
        return feats

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.student(batched_inputs)
        t_feats = self._teacher_backbone_features(batched_inputs)
        s_feats, losses = self.distiller.student_features(lambda: self.student(batched_inputs))
        losses["loss_distill"] = self.distiller.distill_loss(s_feats, t_feats) / self.ims_per_batch
        return losses

    @torch.no_grad()
    def track_batch(self, batched_inputs: List[Dict]) -> int:
        """Accumulate matching statistics of one batch (backbones only); returns the number of images."""
        t_feats = self._teacher_backbone_features(batched_inputs)
        images = self.student.preprocess_image(batched_inputs)
        s_feats, _ = self.distiller.student_features(lambda: self.student.backbone.bottom_up(images.tensor))
        self.distiller.track_running_stats(t_feats, s_feats)
        return len(batched_inputs)
