"""Distillation meta-architectures: a frozen teacher detector teaching a trainable student of the same kind.

:class:`DistillDetector` holds what every detector shares (building and freezing the teacher, the feature
distillers of :mod:`mgd_d2.feature_distill` on the bottom-up C2-C5, the matching's tracking pass, the
loss-factor calibration, inference by the student alone, ``student.*`` checkpoint keys for export);
:class:`DistillRetinaNet` and :class:`DistillGeneralizedRCNN` only name their detector, and the latter adds
the logit methods on its box head (:mod:`mgd_d2.logit_distill`).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from mgd.registry import DISTILLERS

from .config import check_method, teacher_config
from .feature_distill import build_feature_distiller, feature_loss
from .logit_distill import build_logit_distiller, capture_outputs, teacher_box_logits


class DistillDetector(nn.Module):
    """Training: the student's own losses plus the method's terms (``loss_distill`` for the feature methods,
    ``loss_<term>`` for the logit ones); inference: the student alone. Checkpoint keys: ``student.*`` (a plain
    detector under that prefix), ``teacher.*``, ``distiller.*`` (matching, margins, student-side norms or OFD's
    connectors; none for the logit methods). Whether a method distils the backbones' features or the box
    head's logits is its ``needs_features`` capability, never its name.

    Subclasses set ``detector`` (the Detectron2 meta-architecture class of both networks) and, when its box
    head's class logits can be distilled (``box_logits``), implement :meth:`logit_losses`."""

    detector: type = nn.Module
    #: Whether the logit methods (:func:`mgd_d2.config.logit_methods`) apply: a box head to read logits from.
    box_logits: bool = False

    def __init__(self, cfg):
        super().__init__()
        self.method = check_method(cfg, self.box_logits)
        student_cfg = cfg.clone()
        student_cfg.defrost()
        student_cfg.MODEL.META_ARCHITECTURE = self.detector.__name__
        self.student = self.detector(student_cfg)
        self.teacher = self.detector(teacher_config(cfg, self.detector.__name__))
        self.teacher.requires_grad_(False)
        if cfg.MGD.TEACHER.WEIGHTS:
            DetectionCheckpointer(self.teacher).load(cfg.MGD.TEACHER.WEIGHTS)
        self.ims_per_batch = cfg.SOLVER.IMS_PER_BATCH
        if DISTILLERS[self.method].needs_features:
            self.distiller = build_feature_distiller(cfg, self.teacher.backbone.bottom_up,
                                                     self.student.backbone.bottom_up)
            self.logit_weight = 1.0
        else:
            self.distiller, self.logit_weight = build_logit_distiller(cfg, self.teacher, self.student)
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self) -> torch.device:
        return self.student.device

    def train(self, mode: bool = True) -> "DistillDetector":
        super().train(mode)
        self.teacher.train(False)  # frozen BN statistics, no dropout: the teacher is a fixed target
        return self

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.student(batched_inputs)
        if not self.distiller.needs_features:
            return self.logit_losses(batched_inputs)
        t_feats = self._teacher_backbone_features(batched_inputs)
        # the student runs once: its detection losses and its C2-C5 come out of the same forward
        s_feats, losses = self.distiller.student_features(lambda: self.student(batched_inputs))
        losses["loss_distill"] = feature_loss(self.distiller, s_feats, t_feats, len(batched_inputs),
                                              self.ims_per_batch)
        return losses

    def logit_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no logit method")

    def _teacher_backbone_features(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        images = self.teacher.preprocess_image(batched_inputs)
        feats, _ = self.distiller.teacher_features(lambda: self.teacher.backbone.bottom_up(images.tensor))
        return feats

    @torch.no_grad()
    def calibration_losses(self, batched_inputs: List[Dict]) -> Tuple[float, float, int]:
        """One training-mode forward without gradients for :func:`mgd.calibrate_loss_factor`: (loss_distill,
        the sum of the detector's own losses, images); the student's state is left as it was (RetinaNet moves
        its loss normaliser, a running mean of the positive anchors, at every training forward)."""
        normalizer = getattr(self.student, "loss_normalizer", None)
        try:
            losses = self.forward(batched_inputs)
        finally:
            if normalizer is not None:
                self.student.loss_normalizer = normalizer
        distill = float(losses.pop("loss_distill"))
        return distill, float(sum(losses.values())), len(batched_inputs)

    @torch.no_grad()
    def track_batch(self, batched_inputs: List[Dict]) -> int:
        """Feed one batch to the tracking pass of a distiller whose ``prepare_tracks_features`` is true (MGD's
        matching statistics, backbones only); returns the number of images."""
        t_feats = self._teacher_backbone_features(batched_inputs)
        images = self.student.preprocess_image(batched_inputs)
        s_feats, _ = self.distiller.student_features(lambda: self.student.backbone.bottom_up(images.tensor))
        self.distiller.track_running_stats(t_feats, s_feats)
        return len(batched_inputs)


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DistillDetector):
    """A RetinaNet student distilled from a RetinaNet teacher (feature methods)."""

    detector = RetinaNet


@META_ARCH_REGISTRY.register()
class MGDRetinaNet(DistillRetinaNet):
    """The first release's name of :class:`DistillRetinaNet`, kept for its configs and checkpoints."""


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DistillDetector):
    """A Faster R-CNN (Detectron2's GeneralizedRCNN, StandardROIHeads) student distilled from a Faster R-CNN
    teacher: the feature methods, or a logit method (KD, DKD, ...) on the box head's class logits."""

    detector = GeneralizedRCNN
    box_logits = True

    def logit_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """The student's losses plus ``loss_<term>`` for each term of the method (``loss_kd``, ``loss_dkd``),
        times its MGD.<NAME>.WEIGHT: :meth:`mgd.Distiller.compute_terms` on the student's class logits of the
        proposals its ROI heads sampled (captured from its own forward), the teacher's box head on them and
        the proposals' ground-truth classes."""
        heads = self.student.roi_heads
        with capture_outputs({"sampled": heads, "predictions": heads.box_predictor}) as out:
            losses = self.student(batched_inputs)
        proposals = out["sampled"][0]  # StandardROIHeads returns (sampled proposals, losses) in training
        with torch.no_grad():
            images = self.teacher.preprocess_image(batched_inputs)
            t_logits = teacher_box_logits(self.teacher.roi_heads, self.teacher.backbone(images.tensor), proposals)
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        terms = self.distiller.compute_terms(student_logits=out["predictions"][0], teacher_logits=t_logits,
                                             target=gt_classes)
        for term, value in terms.items():
            losses[f"loss_{term}"] = self.logit_weight * value
        return losses
