"""The original code's module, kept for its users: ``import mgd.builder`` then
``mgd.builder.MGDistiller(t_net, s_net, ignore_inds=[], reducer='amp', sync_bn=False, with_kd=True, preReLU=True,
distributed=False, det=False)``, ``mgd.builder.SMDistiller(...)`` and ``mgd_update(loader, d_net)`` work verbatim.

The method itself lives in :mod:`mgd.distillers.mgd`, the matching pass in :mod:`mgd.matching.update`.
"""
from .distillers.base import TrainableDistiller
from .distillers.mgd import DETECTION_LOSS_FACTORS, MGDistiller, SMDistiller, stage_loss
from .losses.ofd import distillation_loss, get_margin_from_BN
from .matching.update import mgd_update

__all__ = ["MGDistiller", "SMDistiller", "TrainableDistiller", "get_margin_from_BN", "distillation_loss", "mgd_update",
           "DETECTION_LOSS_FACTORS", "stage_loss"]
