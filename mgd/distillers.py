"""The registry of every distiller behind the one contract (:mod:`mgd.base`), and the seed papers' other
methods beside MGD, on the same feature-capture machinery.

``build_distiller(name, teacher, student, **options)`` builds any of them; every option has a default, so
``build_distiller(name, teacher, student)`` works for every name on torchvision classifiers.

* ``mgd``: :class:`~mgd.builder.MGDistiller` (Yue et al., ECCV 2020); ``sm``: MGD with sparse matching.
* ``kd``, ``nd`` (KD++), ``dkd``, ``dist``: the logit methods of :mod:`mgd.logit_distillers`, each with
  KD++'s ND term as its "++" (``nd_weight`` > 0); ``reviewkd``: :mod:`mgd.reviewkd`; ``crd``: :mod:`mgd.crd`.
* ``at``: Zagoruyko & Komodakis 2017, beta/2 sum_stages at_loss on post-ReLU stage outputs.
* ``sp``: Tung & Mori 2019, gamma * sp_loss on the last stage's post-ReLU output.
* ``ofd``: Heo et al. 2019, a 1x1 conv + BN connector per stage from student to teacher channels, partial
  L2 to the teacher's pre-ReLU features above OFD's margins, stage weights 1/2^(n-i-1).
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Set, Type, Union

import torch
from torch import nn

from .base import Distiller
from .builder import MGDistiller, SMDistiller
from .crd import CRDDistiller
from .embedding import classifier_layer
from .feature_distiller import PartialL2Distiller
from .logit_distillers import DISTDistiller, DKDDistiller, KDDistiller, NDDistiller
from .losses import at_loss, sp_loss
from .margin import margin_target, partial_l2
from .reviewkd import ReviewKDDistiller

__all__ = ["Distiller", "KDDistiller", "ATDistiller", "SPDistiller", "OFDistiller", "NDDistiller", "DKDDistiller",
           "DISTDistiller", "ReviewKDDistiller", "CRDDistiller", "DISTILLERS", "build_distiller", "distiller_options",
           "option_default", "classifier_layer"]


class ATDistiller(Distiller):
    """Attention transfer on every distilled stage's post-ReLU output: beta / 2 * sum of at_loss (beta =
    1000). ``ignore_inds`` as MGD's (the attention maps of a stage must have the teacher's spatial size)."""

    def __init__(self, t_net: nn.Module, s_net: nn.Module, beta: float = 1e3,
                 ignore_inds: Optional[List[int]] = None, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.beta = float(beta)
        t_stages, s_stages = len(self._t_src.channels()), len(self._s_src.channels())
        if t_stages != s_stages:
            raise ValueError(f"the teacher has {t_stages} stages but the student has {s_stages}")
        self._select_stages(t_stages, ignore_inds)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        total = sum(at_loss(torch.relu(s_feats[i]), torch.relu(t_feats[i])) for i in self.stages)
        return {"at": self.beta / 2 * total}


class SPDistiller(Distiller):
    """Similarity-preserving KD on the last stage's post-ReLU output: gamma * sp_loss (gamma = 3000)."""

    def __init__(self, t_net: nn.Module, s_net: nn.Module, gamma: float = 3e3, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.gamma = float(gamma)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"sp": self.gamma * sp_loss(torch.relu(s_feats[-1]), torch.relu(t_feats[-1]))}


class OFDistiller(PartialL2Distiller):
    """OFD: connector (1x1 conv + BN, student -> teacher channels) per stage, partial L2 above the margins.

    The summed loss is divided by the batch size and ``loss_factor`` (OFD's code: 1e4 on ImageNet, 1e3 on
    CIFAR). ``teacher_train_mode=True`` keeps the teacher's BN in train mode, as the paper's code does.
    """

    factor_terms = ("ofd",)

    def __init__(self, t_net: nn.Module, s_net: nn.Module, loss_factor: Union[float, str] = 1e4, **kwargs) -> None:
        super().__init__(t_net, s_net, loss_factor=loss_factor, **kwargs)
        self.connectors = nn.ModuleList([  # none (an Identity) for an ignored stage: no unused parameters
            nn.Sequential(nn.Conv2d(s, t, 1, bias=False), nn.BatchNorm2d(t)) if i in self.stages else nn.Identity()
            for i, (s, t) in enumerate(zip(self.s_channels, self.t_channels))])
        for i in self.stages:
            nn.init.kaiming_normal_(self.connectors[i][0].weight, mode="fan_out", nonlinearity="relu")

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        self._check_spatial(t_feats, s_feats)
        total = torch.zeros((), device=s_out.device)
        for i in self.stages:
            target_i, floor = margin_target(t_feats[i], self.margins[i])
            total = total + partial_l2(self.connectors[i](s_feats[i].float()), target_i, floor) * self.stage_weights[i]
        return {"ofd": self.normalise(total, s_out.shape[0])}


#: name -> distiller class; every class takes (teacher, student, **options) with a default for each option.
DISTILLERS: Dict[str, Type[Distiller]] = {
    "mgd": MGDistiller, "sm": SMDistiller, "ofd": OFDistiller, "kd": KDDistiller, "at": ATDistiller,
    "sp": SPDistiller, "nd": NDDistiller, "dkd": DKDDistiller, "dist": DISTDistiller, "reviewkd": ReviewKDDistiller,
    "crd": CRDDistiller,
}


def build_distiller(name: str, t_net: nn.Module, s_net: nn.Module, **options) -> Distiller:
    """The distiller called ``name`` (see :data:`DISTILLERS`) with ``options``; ValueError listing the valid
    names for an unknown one, TypeError naming an option the method does not take."""
    if name not in DISTILLERS:
        raise ValueError(f"unknown distiller {name!r}; valid: {', '.join(sorted(DISTILLERS))}")
    unknown = sorted(set(options) - distiller_options(name))
    if unknown:
        raise TypeError(f"distiller {name!r} takes no option(s) {unknown}; its options: "
                        f"{', '.join(sorted(distiller_options(name)))}")
    return DISTILLERS[name](t_net, s_net, **options)


def _init_parameters(name: str) -> Dict[str, inspect.Parameter]:
    """The keyword parameters of the distiller called ``name``, following ``**kwargs`` up its bases (the
    most derived definition of a name wins)."""
    found: Dict[str, inspect.Parameter] = {}
    for cls in DISTILLERS[name].__mro__:
        if "__init__" not in vars(cls) or cls in (nn.Module, object):
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, teacher, student
        for p in params:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def option_default(name: str, option: str) -> Any:
    """The default of ``option`` for the distiller called ``name`` (None when it has no such option)."""
    param = _init_parameters(name).get(option)
    return None if param is None or param.default is param.empty else param.default


def distiller_options(name: str) -> Set[str]:
    """The keyword options the distiller called ``name`` accepts (following ``**kwargs`` up its bases)."""
    return set(_init_parameters(name))
