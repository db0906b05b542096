"""Masked Generative Distillation (Yang, Li, Shao, Shi, Yuan, Yuan, ECCV 2022, "Masked Generative Distillation").

Not this package's MGD (Matching Guided Distillation, Yue et al., ECCV 2020, the method ``mgd``): what mmrazor,
PaddleDetection and the YOLO distillers call "MGD" is this one, registered here as ``masked_generative``.

The student's feature (aligned to the teacher's width by a 1x1 conv where the widths differ) is masked at
random (the paper's Eq. 1: M = 0 where a uniform draw R is below the masked share lambda, 1 elsewhere), a
generation block G (3x3 conv, ReLU, 3x3 conv; Eq. 2) regenerates the teacher's *full* feature from it, and the
distillation loss is the squared error summed over channels and positions (Eq. 3), weighted by alpha in the total
loss (Eq. 4) and, in the authors' code (not in the paper's equations), divided by the batch size N:

    L_dis = alpha / N * sum_{n,c,h,w} (T - G(f_align(S) * M))^2

as the authors' ``FeatureLoss`` / ``MGDLoss`` compute it (yzd-v/MGD: ``det/mmdet/distillation/losses/mgd.py``,
``seg/mmseg/distillation/losses/mgd.py``, ``cls/mmcls/distillation/losses/mgd.py``: ``nn.MSELoss(reduction='sum')``
divided by N, times ``alpha_mgd``). Their detection and segmentation code masks *positions* (a (N, 1, H, W) draw,
zero where it exceeds 1 - lambda); their classification code masks *channels* (a (N, C, 1, 1) draw, zero where
it is below lambda; the spatial line is commented out there): both are :func:`random_mask`'s kinds.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import torch

from .precision import float32_loss

__all__ = ["masked_generative_loss", "random_mask", "MaskKind"]

#: What a mask zeroes: whole positions (every channel of a pixel; the paper, the authors' detection and
#: segmentation code) or whole channels (every position of a channel; the authors' classification code).
MaskKind = Literal["spatial", "channel"]


def random_mask(shape: Sequence[int], ratio: float, kind: MaskKind = "spatial",
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A float32 0/1 mask broadcastable to the (N, C, H, W) ``shape`` with about ``ratio`` of its entries 0.

    ``kind`` "spatial": (N, 1, H, W), 0 where a uniform draw exceeds 1 - ratio (the authors' detection and
    segmentation code, ``torch.where(mat > 1 - lambda_mgd, 0, 1)``); "channel": (N, C, 1, 1), 0 where the draw is
    below ratio (their classification code, ``torch.where(mat < lambda_mgd, 0, 1)``). Drawn on the CPU from
    ``generator`` (the global generator when None), so that a seeded generator gives the same mask on any device.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"the mask ratio must be in [0, 1), got {ratio}")
    n, c, h, w = (int(v) for v in shape)
    if kind == "spatial":
        draw = torch.rand((n, 1, h, w), generator=generator)
        return (draw <= 1.0 - ratio).float()
    if kind == "channel":
        draw = torch.rand((n, c, 1, 1), generator=generator)
        return (draw >= ratio).float()
    raise ValueError(f"mask kind must be 'spatial' or 'channel', got {kind!r}")


@float32_loss
def masked_generative_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                           generation: Callable[[torch.Tensor], torch.Tensor], alpha: float = 2e-5) -> torch.Tensor:
    """alpha / N * sum (teacher - generation(student * mask))^2 (Eq. 2-3 of the paper), in float32.

    ``student``: the (N, C, H, W) student feature already aligned to the teacher's C channels; ``teacher``: the
    teacher's (N, C, H, W) feature (detached here); ``mask``: :func:`random_mask`'s, broadcastable to them;
    ``generation``: the generation block G (its parameters float32). alpha's default, 2e-5, is the authors'
    detection (RetinaNet) and segmentation value; their classification code uses 7e-5.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"the aligned student feature {tuple(student.shape)} and the teacher's "
                         f"{tuple(teacher.shape)} must have one shape")
    masked = student.float() * mask.to(device=student.device, dtype=torch.float32)
    generated = generation(masked).float()
    return alpha * (generated - teacher.detach().float()).pow(2).sum() / teacher.shape[0]
