"""Contrastive Representation Distillation (Tian et al., ICLR 2020) behind the one contract.

Both networks' penultimate embeddings go through a linear map to ``feat_dim`` (128) and an L2
normalisation. Each side is contrasted against the *other* side's memory: the student's embedding of
sample i should score its teacher-memory entry i above ``num_negatives`` (16384) entries of other samples,
and the teacher's embedding the student-memory entry i, with the NCE objective (:func:`mgd.losses.nce_loss`,
temperature 0.07, the normalising constants Z fixed at the first batch as the authors do). After each step
the memories move to the new embeddings with momentum 0.5. Loss: CE + 0.8 * (NCE_student + NCE_teacher),
the authors' CIFAR-100 setting (``-a 0 -b 0.8``).

The memory bank needs each sample's dataset index (``forward_train(images, target, indices=...)``; the
applications pass it only to the methods whose ``needs_indices`` is true) and costs N x 128 x 2 floats: 51 MB
for CIFAR's 50,000 images, 1.3 GB for ImageNet's 1.28 M in float32. ``memory="queue"`` needs neither: a
MoCo-style queue of the last ``num_negatives`` embeddings of each side supplies the negatives, and the
positive is the other network's current embedding of the same image (our variant, not in the paper).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as mdist
from ..features import embedding_layer, embedding_spec
from ..losses import nce_loss
from ..registry import register_distiller
from .base import Distiller

__all__ = ["CRDDistiller"]


@register_distiller("crd")
class CRDDistiller(Distiller):
    """CRD. ``num_samples``: the training set's size (the bank's rows; the applications give it); ``memory``:
    "bank" (the paper's) or "queue".

    Args:
        weight: weight of the CRD term (0.8).
        num_negatives: negatives per sample (16384).
        temperature: the NCE temperature (0.07).
        momentum: momentum of the memory's updates (0.5).
        feat_dim: size of the embeddings compared (128).
        memory: "bank" (the paper's: N x feat_dim x 2 floats, needs the samples' indices) or "queue" (the last
            num_negatives embeddings, MoCo-style).
    """

    cli_options = ("weight", "num_negatives", "temperature", "momentum", "feat_dim", "memory")

    replica_safe = False  # the memory moves in the training forward: DistributedDataParallel, not DataParallel

    def __init__(self, t_net: nn.Module, s_net: nn.Module, num_samples: Optional[int] = None, feat_dim: int = 128,
                 num_negatives: int = 16384, temperature: float = 0.07, momentum: float = 0.5, weight: float = 0.8,
                 memory: Literal["bank", "queue"] = "bank", teacher_embedding: Optional[str] = None,
                 student_embedding: Optional[str] = None, **kwargs) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"crd momentum must be in [0, 1] (the memory keeps momentum x its old rows), got {momentum}")
        if not temperature > 0:
            raise ValueError(f"crd temperature must be positive, got {temperature}")
        if memory not in ("bank", "queue"):
            raise ValueError(f"crd memory must be 'bank' or 'queue', got {memory!r}")
        if memory == "bank" and not num_samples:
            raise ValueError("crd's memory bank needs num_samples (the training set's size); or memory='queue'")
        if memory == "bank" and num_negatives >= num_samples:
            raise ValueError(f"crd needs fewer negatives ({num_negatives}) than training samples ({num_samples}): "
                             f"lower num_negatives (--crd-num-negatives), or use memory='queue'")
        kwargs.update(teacher_layers=[embedding_spec(t_net, teacher_embedding)],
                      student_layers=[embedding_spec(s_net, student_embedding)])
        super().__init__(t_net, s_net, **kwargs)
        self.memory_kind, self.needs_indices = memory, memory == "bank"
        self.num_negatives, self.temperature = int(num_negatives), float(temperature)
        self.momentum, self.weight = float(momentum), float(weight)
        self.embed_s = nn.Linear(embedding_layer(s_net, student_embedding).in_features, feat_dim)
        self.embed_t = nn.Linear(embedding_layer(t_net, teacher_embedding).in_features, feat_dim)
        rows = int(num_samples) if memory == "bank" else self.num_negatives
        self.num_data = int(num_samples or rows)  # N of the noise distribution 1 / N
        stdv = 1.0 / math.sqrt(feat_dim / 3)  # the authors' initialisation: uniform in [-stdv, stdv]
        gen = torch.Generator().manual_seed(0)  # the same memories on every process, whatever their RNG states
        self.register_buffer("memory_s", torch.rand(rows, feat_dim, generator=gen).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(rows, feat_dim, generator=gen).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("log_z", torch.full((2,), float("nan")))  # log Z of the student's, teacher's scores
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _negatives(self, positives: torch.Tensor) -> torch.Tensor:
        """(B, K) indices drawn uniformly from the other samples (the authors draw from the other classes)."""
        draw = torch.randint(0, self.memory_s.shape[0] - 1, (positives.shape[0], self.num_negatives),
                             device=positives.device)
        return draw + (draw >= positives[:, None]).long()  # skip the positive itself

    @staticmethod
    def _scores(memory: torch.Tensor, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """<memory[rows[b, j]], v[b]> for every b, j, by the cheaper of a full product and a gather (on a copy:
        the memory moves in place before the backward pass)."""
        if memory.shape[0] * v.shape[0] <= rows.numel() * memory.shape[1]:
            return (v @ memory.clone().t()).gather(1, rows)
        return torch.einsum("bkd,bd->bk", memory[rows], v)

    def _log_scores(self, dots: torch.Tensor, side: int) -> torch.Tensor:
        logits = dots / self.temperature
        if torch.isnan(self.log_z[side]):  # the first batch fixes Z = mean(exp(logits)) * N, all ranks alike
            with torch.no_grad():
                log_mean = torch.logsumexp(logits.detach().flatten(), 0) - math.log(logits.numel())
                mean = mdist.all_reduce_sum(log_mean.clone().view(1)) / mdist.get_world_size()
                self.log_z[side] = mean[0] + math.log(self.num_data)
        return logits - self.log_z[side]

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        v_s = F.normalize(self.embed_s(s_feats[-1].flatten(1).float()), dim=1)
        v_t = F.normalize(self.embed_t(t_feats[-1].flatten(1).float()), dim=1)
        if self.memory_kind == "bank":
            idx = self._indices.to(v_s.device).long()
            rows = torch.cat([idx[:, None], self._negatives(idx)], dim=1)
            dots_s = self._scores(self.memory_t, rows, v_s)  # the student against the teacher's memory
            dots_t = self._scores(self.memory_s, rows, v_t)
        else:
            dots_s = torch.cat([(v_s * v_t.detach()).sum(1, keepdim=True), v_s @ self.memory_t.clone().t()], dim=1)
            dots_t = torch.cat([(v_t * v_s.detach()).sum(1, keepdim=True), v_t @ self.memory_s.clone().t()], dim=1)
        loss = nce_loss(self._log_scores(dots_s, 0), self.num_data) + nce_loss(self._log_scores(dots_t, 1),
                                                                               self.num_data)
        if self.training:
            self._update_memory(v_s.detach(), v_t.detach())
        return {"crd": self.weight * loss}

    @torch.no_grad()
    def _update_memory(self, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Every rank applies every rank's embeddings, so the memories stay identical across processes."""
        v_s, v_t = mdist.all_gather_cat(v_s), mdist.all_gather_cat(v_t)
        if self.memory_kind == "bank":
            idx = mdist.all_gather_cat(self._indices.to(v_s.device).long())
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                memory[idx] = F.normalize(memory[idx] * self.momentum + v * (1 - self.momentum), dim=1)
            return
        rows = (self.queue_ptr + torch.arange(v_s.shape[0], device=v_s.device)) % self.memory_s.shape[0]
        self.memory_s[rows], self.memory_t[rows] = v_s, v_t
        self.queue_ptr.copy_((self.queue_ptr + v_s.shape[0]) % self.memory_s.shape[0])
