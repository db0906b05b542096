"""mgd: Matching Guided Distillation (Yue, Deng, Zhou, ECCV 2020) for PyTorch.

Quick start::

    import mgd
    distiller = mgd.MGDistiller(torchvision.models.resnet50(), torchvision.models.mobilenet_v2())
    mgd.mgd_update(train_loader, distiller)          # before training and every few epochs
    logits, loss_distill = distiller(images)
"""
from . import builder, features, margin, matching, reducers, runner, sampler  # noqa: F401
from .builder import MGDistiller, SMDistiller
from .features import StageSpec
from .margin import distillation_loss, get_margin_from_BN
from .matching import match_channels
from .update import mgd_update

__all__ = ["MGDistiller", "SMDistiller", "StageSpec", "mgd_update", "match_channels", "get_margin_from_BN",
           "distillation_loss"]
__version__ = "0.1.0"
