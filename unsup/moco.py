"""MoCo (He et al., CVPR 2020) with the v2 improvements (Chen et al., 2020: MLP head, stronger augmentation).

A query encoder f_q is trained with the InfoNCE loss (MoCo Eq. 1) to pick the key of the other view of its
image among the K keys of a queue; the key encoder f_k follows f_q by momentum,
theta_k <- m theta_k + (1 - m) theta_q (Eq. 2), so queued keys stay consistent. Across processes, the
keys of all ranks enter the queue, and the key batch is shuffled across processes before f_k (Sec. 3.3,
"shuffling BN"), so batch statistics cannot leak which key is positive.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mgd import distributed as mdist

__all__ = ["MoCo", "gather_from_all", "TwoCropsTransform", "moco_augmentation"]


gather_from_all = mdist.all_gather_cat  # every rank's rows along dim 0, no gradient


class MoCo(nn.Module):
    """Query/key encoders, the key queue and the InfoNCE logits.

    Args:
        base_encoder: ``num_classes -> nn.Module`` with a final ``fc`` layer (torchvision ResNets).
        dim: feature dimension (K rows of the queue). K: queue length, a multiple of the global batch size.
        m: key-encoder momentum. T: softmax temperature. mlp: MoCo v2's 2-layer projection head.
    """

    def __init__(self, base_encoder: Callable[..., nn.Module], dim: int = 128, K: int = 65536, m: float = 0.999,
                 T: float = 0.07, mlp: bool = False) -> None:
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:
            for encoder in (self.encoder_q, self.encoder_k):
                hidden = encoder.fc.weight.shape[1]
                encoder.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), encoder.fc)
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data.copy_(q.data)
            k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data.mul_(self.m).add_(q.data, alpha=1.0 - self.m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest queue entries with this step's keys from every rank."""
        keys = gather_from_all(keys)
        batch = keys.shape[0]
        ptr = int(self.queue_ptr)
        if self.K % batch:
            raise ValueError(f"the queue length {self.K} must be a multiple of the global batch size {batch}")
        self.queue[:, ptr:ptr + batch] = keys.t()
        self.queue_ptr[0] = (ptr + batch) % self.K

    @torch.no_grad()
    def _shuffle(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Shuffle the global batch across ranks; returns this rank's shuffled part and the inverse order."""
        gathered = gather_from_all(x)
        perm = torch.randperm(gathered.shape[0], device=x.device)
        mdist.broadcast(perm, src=0)
        unshuffle = torch.argsort(perm)
        rank, n = mdist.get_rank(), x.shape[0]
        return gathered[perm.view(-1, n)[rank]], unshuffle

    @torch.no_grad()
    def _unshuffle(self, x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
        gathered = gather_from_all(x)
        n = x.shape[0]
        return gathered[unshuffle.view(-1, n)[mdist.get_rank()]]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, 1 + K): the positive key first, then the queue; labels: zeros (the positive's index)."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update_key_encoder()
            if mdist.is_distributed():
                im_k, unshuffle = self._shuffle(im_k)
                k = self._unshuffle(F.normalize(self.encoder_k(im_k), dim=1), unshuffle)
            else:
                k = F.normalize(self.encoder_k(im_k), dim=1)
        logits, labels = self._logits(q, k)
        self.dequeue_and_enqueue(k)
        return logits, labels

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE's logits (Eq. 1): q . k+ and q . queue, over T; the labels point at k+ (index 0)."""
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        return logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)

    @torch.no_grad()
    def contrastive_loss(self, query: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        """The InfoNCE loss of ``query`` (the query encoder's output, before normalisation) against the keys of
        ``im_k`` and the current queue, with no side effect: no momentum step, nothing enqueued, the key
        encoder's BatchNorm statistics put back. What ``--loss-factor auto`` weighs the distillation term
        against (the key batch is not shuffled across processes: a measurement, not a training step)."""
        saved = {name: buf.clone() for name, buf in self.encoder_k.named_buffers()}
        try:
            k = F.normalize(self.encoder_k(im_k), dim=1)
        finally:
            self.encoder_k.load_state_dict(saved, strict=False)
        logits, labels = self._logits(F.normalize(query.float(), dim=1), k.float())
        return F.cross_entropy(logits, labels)


class TwoCropsTransform:
    """Two independently augmented views of one image: the query and the key."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image) -> List[torch.Tensor]:
        return [self.transform(image), self.transform(image)]


def moco_augmentation(input_size: int, aug_plus: bool) -> Callable:
    """MoCo v1's augmentation, or v2's (--aug-plus: colour jitter with p 0.8 and Gaussian blur, as SimCLR)."""
    from torchvision import transforms as T
    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    crop = T.RandomResizedCrop(input_size, scale=(0.2, 1.0))
    if aug_plus:
        kernel = max(3, (input_size // 10) | 1)  # ~10% of the image, odd
        ops = [crop, T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
               T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5), T.RandomHorizontalFlip()]
    else:
        ops = [crop, T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip()]
    return T.Compose(ops + [T.ToTensor(), normalize])
