"""The registry of every distiller behind the one contract (:mod:`mgd.base`), and the seed papers' other
methods beside MGD, on the same feature-capture machinery.

``build_distiller(name, teacher, student, **options)`` builds any of them; every option has a default, so
``build_distiller(name, teacher, student)`` works for every name on torchvision classifiers.

* ``mgd``: :class:`~mgd.builder.MGDistiller` (Yue et al., ECCV 2020); ``sm``: MGD with sparse matching.
* ``kd``: Hinton et al. 2015, loss (1 - alpha) CE + alpha T^2 KL.
* ``at``: Zagoruyko & Komodakis 2017, beta/2 sum_stages at_loss on post-ReLU stage outputs.
* ``sp``: Tung & Mori 2019, gamma * sp_loss on the last stage's post-ReLU output.
* ``ofd``: Heo et al. 2019, a 1x1 conv + BN connector per stage from student to teacher channels, partial
  L2 to the teacher's pre-ReLU features above OFD's margins, stage weights 1/2^(n-i-1).
* ``nd``: KD++ (Wang et al., ICCV 2023) = KD + the ND loss on the penultimate embeddings.
"""
from __future__ import annotations

import inspect
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Type, Union

import torch
from torch import nn

from . import distributed as mdist
from .base import Distiller
from .builder import MGDistiller, SMDistiller
from .feature_distiller import PartialL2Distiller
from .features import StageSpec, unwrap
from .losses import at_loss, kd_loss, nd_loss, sp_loss
from .margin import margin_target, partial_l2

__all__ = ["Distiller", "KDDistiller", "ATDistiller", "SPDistiller", "OFDistiller", "NDDistiller",
           "DISTILLERS", "build_distiller", "distiller_options", "option_default", "classifier_layer"]


class KDDistiller(Distiller):
    """Hinton's KD: alpha T^2 KL(softmax(t/T) || softmax(s/T)); the cross-entropy keeps weight 1 - alpha
    (Hinton et al. 2015, Sec. 2; alpha 0.9, T 4 as in the CRD benchmark code most toolkits follow)."""

    needs_features = False

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: float = 0.9, temperature: float = 4.0,
                 **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"kd temperature must be positive, got {temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.task_weight = 1.0 - self.alpha

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"kd": self.alpha * kd_loss(s_out, t_out, self.temperature)}


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


def classifier_layer(net: nn.Module) -> str:
    """Name of the final ``nn.Linear`` of a classifier (``fc``, ``classifier.1``, ``head.fc``, ...): the
    layer whose input is the penultimate embedding."""
    linears = [name for name, m in unwrap(net).named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(unwrap(net)).__name__} has no nn.Linear classifier; name the embedding layer")
    return linears[-1]


def _sync_ready_flag(module: "NDDistiller", keys) -> None:
    """After a state dict is loaded: whether it holds the class means (read once, not at every step)."""
    module._ready = bool(module.class_means_ready)


class NDDistiller(KDDistiller):
    """KD++: KD plus the ND loss on the penultimate embeddings (the input of the final classifier).

    The teacher's class-mean embeddings are computed once by :meth:`prepare` (over the training set) and
    kept in a buffer (so checkpoints cache them). When the embedding sizes differ, a linear projection maps
    the student's embedding to the teacher's size. ``num_classes`` defaults to the teacher classifier's
    output count; the embedding layers default to each network's last ``nn.Linear``.
    """

    prepare_name = "class_means"

    def __init__(self, t_net: nn.Module, s_net: nn.Module, num_classes: Optional[int] = None,
                 nd_weight: float = 1.0, alpha: float = 0.9, temperature: float = 4.0,
                 teacher_embedding: Optional[str] = None, student_embedding: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(t_net, s_net, alpha=alpha, temperature=temperature, **kwargs)
        self.nd_weight = float(nd_weight)
        teacher_embedding = teacher_embedding or classifier_layer(t_net)
        student_embedding = student_embedding or classifier_layer(s_net)
        self._t_emb = self._source(t_net, [StageSpec(teacher_embedding, capture="input")], None, "teacher")
        self._s_emb = self._source(s_net, [StageSpec(student_embedding, capture="input")], None, "student")
        t_layer = self._embedding_layer(t_net, teacher_embedding)
        s_dim = self._embedding_layer(s_net, student_embedding).in_features
        t_dim = t_layer.in_features
        if num_classes is None:
            num_classes = t_layer.out_features
        self.projection = nn.Identity() if t_dim == s_dim else nn.Linear(s_dim, t_dim, bias=False)
        self.register_buffer("class_means", torch.zeros(int(num_classes), t_dim))
        self.register_buffer("class_means_ready", torch.zeros((), dtype=torch.bool))
        self._ready = False  # mirrors class_means_ready on the Python side (no device sync per step)
        self.register_load_state_dict_post_hook(_sync_ready_flag)
        self._summary: Dict[str, Any] = {}

    @staticmethod
    def _embedding_layer(net: nn.Module, name: str) -> nn.Linear:
        layer = unwrap(net).get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"the embedding layer {name!r} must be the final nn.Linear, got {type(layer).__name__}")
        return layer

    def prepare_due(self, epoch: int) -> bool:
        return not self._ready

    def prepare(self, loader: Iterable, epoch: Optional[int] = None) -> None:
        """The teacher's class-mean embeddings over ``loader`` ((images, labels) batches, each process its
        own shard)."""
        self.compute_class_means(loader)

    def prepared_state(self) -> List[torch.Tensor]:
        return [self.class_means]

    def prepare_summary(self) -> Dict[str, Any]:
        return dict(self._summary)

    @torch.no_grad()
    def compute_class_means(self, loader: Iterable, device: Optional[torch.device] = None) -> None:
        """Average the teacher's embeddings per class over ``loader`` ((images, labels) batches); summed
        over all processes when distributed."""
        start = time.perf_counter()
        device = device or self.class_means.device
        sums = torch.zeros_like(self.class_means, dtype=torch.float64)
        counts = torch.zeros(self.class_means.shape[0], dtype=torch.float64, device=device)
        was = self.t_net.training
        self.t_net.eval()
        for images, labels in loader:
            (emb,), _ = self._t_emb(self.t_net, images.to(device))
            labels = labels.to(device)
            sums.index_add_(0, labels, emb.double())
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.t_net.train(was)
        mdist.all_reduce_sum(sums)
        mdist.all_reduce_sum(counts)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"no training image of class(es) {missing[:10]}: cannot compute their mean embedding")
        self.class_means.copy_((sums / counts[:, None]).float())
        self.class_means_ready.fill_(True)
        self._ready = True
        self._summary = {"classes": int(counts.numel()), "images": int(counts.sum().item()),
                         "seconds": round(time.perf_counter() - start, 2)}

    def run_networks(self, images):
        with torch.no_grad():
            (t_emb,), t_out = self._t_emb(self.t_net, images)
        (s_emb,), s_out = self._s_emb(self.s_net, images)
        return [t_emb], t_out, [s_emb], s_out

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        if target is None:
            raise ValueError("the ND loss needs the labels: call forward_train(images, target)")
        if not self._ready:
            raise RuntimeError("call prepare(train_loader) (the class means) before training with the ND loss")
        out = super().losses(s_feats, t_feats, s_out, t_out, target)
        out["nd"] = self.nd_weight * nd_loss(self.projection(s_feats[0].float()), t_feats[0], self.class_means,
                                             target)
        return out


#: name -> distiller class; every class takes (teacher, student, **options) with a default for each option.
DISTILLERS: Dict[str, Type[Distiller]] = {
    "mgd": MGDistiller, "sm": SMDistiller, "ofd": OFDistiller, "kd": KDDistiller, "at": ATDistiller,
    "sp": SPDistiller, "nd": NDDistiller,
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
