"""The seed papers' other distillers beside MGD, on the same feature-capture machinery.

Every distiller is an ``nn.Module`` holding a frozen teacher and a trainable student; ``forward(x, target)``
returns ``(student logits, {loss name: weighted loss})`` and ``ce_weight`` says how much of the usual
cross-entropy the method keeps. Stage features come from :mod:`mgd.features` (hooks on named modules or
built-in torchvision positions); OFD's margins come from :mod:`mgd.margin`, exactly as MGD's.

* ``KDDistiller``: Hinton et al. 2015, loss (1 - alpha) CE + alpha T^2 KL.
* ``ATDistiller``: Zagoruyko & Komodakis 2017, beta/2 sum_stages at_loss on post-ReLU stage outputs.
* ``SPDistiller``: Tung & Mori 2019, gamma * sp_loss on the last stage's post-ReLU output.
* ``OFDistiller``: Heo et al. 2019, a 1x1 conv + BN connector per stage from student to teacher channels,
  partial L2 to the teacher's pre-ReLU features above OFD's margins, stage weights 1/2^(n-i-1).
* ``NDDistiller``: KD++ (Wang et al. 2023) = KD + the ND loss on the penultimate embeddings.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import distributed as mdist
from .base import DistillerBase, check_networks
from .features import StageSpec, make_feature_source, unwrap
from .losses import at_loss, kd_loss, nd_loss, sp_loss
from .margin import margin_from_bn, partial_l2, relu_floor

__all__ = ["Distiller", "KDDistiller", "ATDistiller", "SPDistiller", "OFDistiller", "NDDistiller",
           "DISTILLERS", "build_distiller"]

Layers = Optional[Sequence[Union[str, StageSpec]]]


class Distiller(DistillerBase):
    """Base: teacher (no gradients, eval mode unless ``teacher_train_mode``) and student, optional stage
    features. Subclasses implement ``losses``. The networks are submodules; ``own_state_dict()`` is the
    distiller's own state without them (connectors, buffers)."""

    ce_weight = 1.0
    needs_features = True

    def __init__(self, t_net: nn.Module, s_net: nn.Module, *, teacher_layers: Layers = None,
                 student_layers: Layers = None, teacher_bns: Optional[Sequence[str]] = None,
                 teacher_train_mode: bool = False) -> None:
        super().__init__()
        check_networks(t_net, s_net)
        self.t_net, self.s_net = t_net, s_net
        self.teacher_train_mode = bool(teacher_train_mode)
        self.t_net.requires_grad_(False)
        if self.needs_features:
            self._t_src = make_feature_source(t_net, teacher_layers, teacher_bns, "teacher")
            self._s_src = make_feature_source(s_net, student_layers, None, "student")
            self.t_channels = self._t_src.channels()
            self.s_channels = self._s_src.channels()
            if len(self.t_channels) != len(self.s_channels):
                raise ValueError(f"the teacher has {len(self.t_channels)} stages but the student has "
                                 f"{len(self.s_channels)}")

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _run(self, x: torch.Tensor) -> Tuple[Any, Any, Any, Any]:
        if self.needs_features:
            with torch.no_grad():
                t_feats, t_out = self._t_src(self.t_net, x, True)
            s_feats, s_out = self._s_src(self.s_net, x, True)
        else:
            with torch.no_grad():
                t_out = self.t_net(x)
            s_out, t_feats, s_feats = self.s_net(x), None, None
        return t_feats, t_out, s_feats, s_out

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None):
        t_feats, t_out, s_feats, s_out = self._run(x)
        return s_out, self.losses(s_feats, t_feats, s_out, t_out, target)

    def losses(self, s_feats, t_feats, s_out, t_out, target) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


class KDDistiller(Distiller):
    """Hinton's KD: alpha T^2 KL(softmax(t/T) || softmax(s/T)); the cross-entropy keeps weight 1 - alpha."""

    needs_features = False

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: float = 0.9, temperature: float = 4.0,
                 **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.ce_weight = 1.0 - self.alpha

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"kd": self.alpha * kd_loss(s_out, t_out, self.temperature)}


class ATDistiller(Distiller):
    """Attention transfer on every stage's post-ReLU output: beta / 2 * sum of at_loss (beta = 1000)."""

    def __init__(self, t_net: nn.Module, s_net: nn.Module, beta: float = 1e3, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.beta = float(beta)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        total = sum(at_loss(torch.relu(s), torch.relu(t)) for s, t in zip(s_feats, t_feats))
        return {"at": self.beta / 2 * total}


class SPDistiller(Distiller):
    """Similarity-preserving KD on the last stage's post-ReLU output: gamma * sp_loss (gamma = 3000)."""

    def __init__(self, t_net: nn.Module, s_net: nn.Module, gamma: float = 3e3, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.gamma = float(gamma)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"sp": self.gamma * sp_loss(torch.relu(s_feats[-1]), torch.relu(t_feats[-1]))}


class OFDistiller(Distiller):
    """OFD: connector (1x1 conv + BN, student -> teacher channels) per stage, partial L2 above the margins.

    The summed loss is divided by the batch size and ``loss_factor`` (OFD: 1e3 on CIFAR, 1e4 on ImageNet).
    ``teacher_train_mode=True`` keeps the teacher's BN in train mode, as the paper's code does.
    """

    def __init__(self, t_net: nn.Module, s_net: nn.Module, loss_factor: float = 1e3, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.loss_factor = float(loss_factor)
        self.connectors = nn.ModuleList([
            nn.Sequential(nn.Conv2d(s, t, 1, bias=False), nn.BatchNorm2d(t))
            for s, t in zip(self.s_channels, self.t_channels)])
        for conn in self.connectors:
            nn.init.kaiming_normal_(conn[0].weight, mode="fan_out", nonlinearity="relu")
        self._margin_bns = self._t_src.bns()
        for i, bn in enumerate(self._margin_bns):
            self.register_buffer(f"margin{i + 1}", margin_from_bn(bn))
        unwrap(t_net).register_load_state_dict_post_hook(lambda module, keys: self.init_margins())

    def init_margins(self) -> None:
        for i, bn in enumerate(self._margin_bns):
            getattr(self, f"margin{i + 1}").copy_(margin_from_bn(bn))

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        n = len(s_feats)
        total = s_out.new_zeros(())
        for i, (s, t) in enumerate(zip(s_feats, t_feats)):
            with torch.no_grad():
                target_i = torch.maximum(t, getattr(self, f"margin{i + 1}").view(1, -1, 1, 1))
                floor = relu_floor(target_i)
            total = total + partial_l2(self.connectors[i](s), target_i, floor) / 2 ** (n - i - 1)
        return {"ofd": total / s_out.shape[0] / self.loss_factor}


class NDDistiller(KDDistiller):
    """KD++: KD plus the ND loss on the penultimate embeddings (the input of the final classifier).

    The teacher's class-mean embeddings are computed once with :meth:`compute_class_means` and kept in a
    buffer (so checkpoints cache them). When the embedding sizes differ, a linear projection maps the
    student's embedding to the teacher's size.
    """

    def __init__(self, t_net: nn.Module, s_net: nn.Module, num_classes: int, nd_weight: float = 1.0,
                 alpha: float = 0.9, temperature: float = 4.0, teacher_embedding: str = "fc",
                 student_embedding: str = "fc", **kwargs) -> None:
        super().__init__(t_net, s_net, alpha=alpha, temperature=temperature, **kwargs)
        self.nd_weight = float(nd_weight)
        self._t_emb = make_feature_source(t_net, [StageSpec(teacher_embedding, capture="input")], None, "teacher")
        self._s_emb = make_feature_source(s_net, [StageSpec(student_embedding, capture="input")], None, "student")
        t_dim = self._embedding_dim(t_net, teacher_embedding)
        s_dim = self._embedding_dim(s_net, student_embedding)
        self.projection = nn.Identity() if t_dim == s_dim else nn.Linear(s_dim, t_dim, bias=False)
        self.register_buffer("class_means", torch.zeros(num_classes, t_dim))
        self.register_buffer("class_means_ready", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _embedding_dim(net: nn.Module, name: str) -> int:
        layer = unwrap(net).get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"the embedding layer {name!r} must be the final nn.Linear, got {type(layer).__name__}")
        return layer.in_features

    @torch.no_grad()
    def compute_class_means(self, loader: Iterable, device: Optional[torch.device] = None) -> None:
        """Average the teacher's embeddings per class over ``loader`` ((images, labels) batches); summed
        over all processes when distributed."""
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

    def _run(self, x):
        with torch.no_grad():
            (t_emb,), t_out = self._t_emb(self.t_net, x)
        (s_emb,), s_out = self._s_emb(self.s_net, x)
        return [t_emb], t_out, [s_emb], s_out

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        if target is None:
            raise ValueError("the ND loss needs the labels: call distiller(images, target)")
        if not bool(self.class_means_ready):
            raise RuntimeError("call compute_class_means(train_loader) before training with the ND loss")
        out = super().losses(s_feats, t_feats, s_out, t_out, target)
        out["nd"] = self.nd_weight * nd_loss(self.projection(s_feats[0]), t_feats[0], self.class_means, target)
        return out


DISTILLERS = {"kd": KDDistiller, "at": ATDistiller, "sp": SPDistiller, "ofd": OFDistiller, "nd": NDDistiller}


def build_distiller(name: str, t_net: nn.Module, s_net: nn.Module, **options) -> Distiller:
    """The distiller called ``name`` (kd, at, sp, ofd, nd); ValueError listing the valid names otherwise."""
    if name not in DISTILLERS:
        raise ValueError(f"unknown distiller {name!r}; valid: {', '.join(sorted(DISTILLERS))} (and mgd: MGDistiller)")
    return DISTILLERS[name](t_net, s_net, **options)
