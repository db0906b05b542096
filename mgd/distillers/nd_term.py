"""The penultimate embedding (the input of a classifier's final linear layer) and KD++'s ND term on it.

KD++ (Wang et al., ICCV 2023, "Improving Knowledge Distillation via Regularizing Feature Norm and
Direction") adds to any logit method (KD, DKD, DIST) or ReviewKD an ND loss that pulls the student's
embedding along the teacher's class-mean direction (:func:`mgd.losses.nd_loss`): the "++" of each method.
:class:`NDTerm` holds what that needs (the teacher's class means, computed once by ``prepare`` and kept in
the state dict; a projection when the embedding sizes differ) for the distillers that mix it in.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from .. import distributed as mdist
from ..losses import nd_loss

__all__ = ["NDTerm"]


def _sync_ready_flag(module: "NDTerm", keys) -> None:
    """After a state dict is loaded: whether it holds the class means (read once, not at every step)."""
    module._nd_ready = bool(module.class_means_ready)


class NDTerm:
    """Mixin of a :class:`~mgd.distillers.base.Distiller`: KD++'s ND loss, enabled by ``nd_weight`` > 0.

    Call :meth:`_init_nd` in ``__init__`` after ``Distiller.__init__``; the distiller captures both embeddings
    (flattened, the last of its features) and adds :meth:`nd_term` to its losses. Buffers ``class_means``,
    ``class_means_ready`` and the ``projection`` (an identity when the sizes agree; else a learned linear map
    from the student's size to the teacher's, our choice: the paper's pairs mostly share the size) are the
    distiller's own state.
    """

    prepare_name = "class_means"
    nd_weight: float = 0.0
    _nd_ready: bool = False

    def _init_nd(self, nd_weight: float, t_layer: Optional[nn.Linear], s_layer: Optional[nn.Linear],
                 num_classes: Optional[int]) -> None:
        if not nd_weight >= 0:
            raise ValueError(f"nd_weight must be >= 0, got {nd_weight}")
        self.nd_weight = float(nd_weight)
        if not self.nd_weight:
            return
        t_dim, s_dim = t_layer.in_features, s_layer.in_features
        self.projection = nn.Identity() if t_dim == s_dim else nn.Linear(s_dim, t_dim, bias=False)
        self.register_buffer("class_means", torch.zeros(int(num_classes or t_layer.out_features), t_dim))
        self.register_buffer("class_means_ready", torch.zeros((), dtype=torch.bool))
        self._nd_ready = False  # mirrors class_means_ready on the Python side (no device sync per step)
        self.register_load_state_dict_post_hook(_sync_ready_flag)
        self._nd_summary: Dict[str, Any] = {}

    # the prepare step: the teacher's class means, once
    def prepare_due(self, epoch: int) -> bool:
        return (self.nd_weight > 0 and not self._nd_ready) or super().prepare_due(epoch)

    def prepare(self, loader: Iterable, epoch: Optional[int] = None, **application) -> None:
        if self.nd_weight > 0 and not self._nd_ready:
            self.compute_class_means(loader)
        super().prepare(loader, epoch, **application)

    def prepared_state(self) -> List[torch.Tensor]:
        return ([self.class_means] if self.nd_weight > 0 else []) + super().prepared_state()

    def prepare_summary(self) -> Dict[str, Any]:
        return {**(self._nd_summary if self.nd_weight > 0 else {}), **super().prepare_summary()}

    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's embedding of ``images`` (the last captured feature, flattened)."""
        feats, _ = self._t_src(self.t_net, images)
        return feats[-1].flatten(1)

    @torch.no_grad()
    def compute_class_means(self, loader: Iterable, device: Optional[torch.device] = None,
                            embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Average the teacher's embeddings per class over ``loader`` ((images, labels) batches, each process
        its shard; summed over all processes when distributed), the teacher in eval mode."""
        start = time.perf_counter()
        device = device or self.class_means.device
        embed = embed or self.teacher_embedding
        sums = torch.zeros_like(self.class_means, dtype=torch.float64)
        counts = torch.zeros(self.class_means.shape[0], dtype=torch.float64, device=device)
        was = self.t_net.training
        self.t_net.eval()
        try:
            for images, labels, *_ in loader:
                emb = embed(images.to(device))
                labels = labels.to(device)
                sums.index_add_(0, labels, emb.double())
                counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        finally:
            self.t_net.train(was)
        mdist.all_reduce_sum(sums)
        mdist.all_reduce_sum(counts)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"no training image of class(es) {missing[:10]}: cannot compute their mean embedding")
        self.class_means.copy_((sums / counts[:, None]).float())
        self.class_means_ready.fill_(True)
        self._nd_ready = True
        self._nd_summary = {"classes": int(counts.numel()), "images": int(counts.sum().item()),
                            "seconds": round(time.perf_counter() - start, 2)}

    def nd_term(self, s_emb: torch.Tensor, t_emb: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        """nd_weight * the ND loss of the (flattened) embeddings."""
        if target is None:
            raise ValueError("the ND loss needs the labels: call forward_train(images, target)")
        if not self._nd_ready:
            raise RuntimeError("call prepare(train_loader) (the class means) before training with the ND loss")
        return self.nd_weight * nd_loss(self.projection(s_emb.flatten(1).float()), t_emb.flatten(1),
                                        self.class_means, target)
