"""Every method of mgd, one file each, behind the one contract of :mod:`.base`; importing this package
registers them (:mod:`mgd.registry`).

* ``mgd`` / ``sm`` (:mod:`.mgd`): Matching Guided Distillation (Yue et al., ECCV 2020), and its sparse matching;
* ``ofd`` (:mod:`.ofd`): Heo et al., ICCV 2019; the partial-L2 base both share is :mod:`.partial_l2`;
* ``at`` (:mod:`.at`), ``sp`` (:mod:`.sp`): attention transfer, similarity-preserving KD;
* ``kd`` (:mod:`.kd`), ``nd`` (:mod:`.nd`, KD++), ``dkd`` (:mod:`.dkd`), ``dist`` (:mod:`.dist`): the logit methods
  (:mod:`.logits`), each with KD++'s ND term as its "++" (:mod:`.nd_term`);
* ``reviewkd`` (:mod:`.reviewkd`), ``crd`` (:mod:`.crd`);
* ``fitnet`` (:mod:`.fitnet`), ``cwd`` (:mod:`.cwd`): FitNets' hints, channel-wise distillation for dense maps;
* ``masked_generative`` (:mod:`.masked_generative`): Masked Generative Distillation (Yang et al., ECCV 2022), the
  "MGD" of mmrazor and PaddleDetection, not this package's ``mgd``;
* ``deit`` (:mod:`.deit`): DeiT's distillation token, and DeiT++ with the ND term;
* every logit method takes ``logit_standardize`` (Sun et al., CVPR 2024; :mod:`mgd.losses.logit_standardization`);
* ``none`` (:mod:`.none`): plain training behind the same contract.

Adding a method is one file here (and its loss in :mod:`mgd.losses`), or a class of another package
registered with :func:`mgd.register_distiller` or the ``mgd.distillers`` entry-point group.
"""
from ..features import classifier_layer
from ..registry import DISTILLERS, build_distiller, distiller_options, option_default, register_distiller
from .at import ATDistiller
from .base import Distiller, TrainableDistiller
from .crd import CRDDistiller
from .dist import DISTDistiller
from .dkd import DKDDistiller
from .kd import KDDistiller
from .logits import LogitDistiller
from .mgd import MGDistiller, SMDistiller
from .nd import NDDistiller
from .none import NoDistiller
from .ofd import OFDistiller
from .partial_l2 import PartialL2Distiller
from .reviewkd import ReviewKDDistiller
from .sp import SPDistiller
from .cwd import CWDistiller
from .deit import DeiTDistiller
from .fitnet import FitNetDistiller
from .masked_generative import MaskedGenerativeDistiller

__all__ = ["Distiller", "TrainableDistiller", "PartialL2Distiller", "LogitDistiller", "MGDistiller", "SMDistiller",
           "OFDistiller", "ATDistiller", "SPDistiller", "KDDistiller", "NDDistiller", "DKDDistiller", "DISTDistiller",
           "ReviewKDDistiller", "CRDDistiller", "NoDistiller", "FitNetDistiller", "CWDistiller",
           "MaskedGenerativeDistiller", "DeiTDistiller", "DISTILLERS", "build_distiller", "register_distiller",
           "distiller_options", "option_default", "classifier_layer"]
