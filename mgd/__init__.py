"""mgd: Matching Guided Distillation (Yue, Deng, Zhou, ECCV 2020) and the feature-distillation family
around it, for PyTorch.

Every method keeps one contract (:mod:`mgd.distillers.base`)::

    import mgd
    d = mgd.build_distiller("mgd", teacher, student)      # or "ofd", "kd", "nd", "dkd", "dist", "reviewkd", ...
    d.set_epoch(epoch)                                    # before each epoch: the warm-ups (DKD, ReviewKD, KD++)
    d.prepare(train_loader)                               # MGD: the channel matching; when d.prepare_due(epoch)
    logits, losses = d.forward_train(images, target)
    loss = d.task_weight * criterion(logits, target) + sum(losses.values())

The layout: :mod:`mgd.registry` (``register_distiller``, ``build_distiller``), :mod:`mgd.distillers` (one file
per method), :mod:`mgd.losses` (the loss functions, one paper each), :mod:`mgd.matching` (cost statistics,
solvers, reducers, ``mgd_update``), :mod:`mgd.features` (how features reach a distiller), :mod:`mgd.tools`
(``python -m mgd.inspect``, ``python -m mgd.plot``). The original code's call works verbatim too
(``mgd.builder.MGDistiller``, ``mgd_update``). The application support shared by the training scripts
(launch, logs, resume, loaders, AMP) is :mod:`mgd.engine`, which ``import mgd`` does not import.
"""
from . import builder, distillers, features, matching, sampler  # noqa: F401
from .calibration import calibrate_loss_factor
from .distillers import Distiller, MGDistiller, SMDistiller, TrainableDistiller
from .features import StageSpec
from .losses.ofd import distillation_loss, get_margin_from_BN
from .matching import match_channels, mgd_update
from .registry import DISTILLERS, build_distiller, register_distiller, unregister_distiller

__all__ = ["build_distiller", "register_distiller", "unregister_distiller", "calibrate_loss_factor", "DISTILLERS",
           "Distiller", "TrainableDistiller", "MGDistiller", "SMDistiller", "StageSpec", "mgd_update",
           "match_channels", "get_margin_from_BN", "distillation_loss"]
__version__ = "0.2.0"
