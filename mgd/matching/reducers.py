"""Channel reducers: teacher (B, tc, H, W) -> (B, sc, H, W) and margins (tc,) -> (sc,) (MGD Sec. 3.3).

``guided_inds`` has length g*sc; entry k*sc + j is the k-th teacher channel matched to student channel j,
so ``guided_inds[k*sc:(k+1)*sc]`` are the teacher channels of group k. Each reducer is a pure function,
vectorized over batch, space and channels; the only Python loop runs over the g groups (g = tc // sc is 1-8
in practice) and does one elementwise op per group instead of stacking and arg-reducing. Every reducer
returns freshly allocated tensors, so callers may update them in place.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = ["amp", "sp", "rd", "sm", "REDUCERS", "get_reducer"]

Reduced = Tuple[torch.Tensor, torch.Tensor]


def _groups(teacher: torch.Tensor, guided_inds: torch.Tensor, num_student: int):
    """The g teacher slices (B, sc, H, W), one per group, in matching order."""
    groups = guided_inds.numel() // num_student
    if groups * num_student != guided_inds.numel():
        raise ValueError(
            f"guided_inds has {guided_inds.numel()} entries, not a multiple of the {num_student} student channels"
        )
    return [teacher.index_select(1, guided_inds[k * num_student:(k + 1) * num_student]) for k in range(groups)]


def amp(teacher: torch.Tensor, margin: torch.Tensor, guided_inds: torch.Tensor, num_student: int,
        generator: Optional[torch.Generator] = None) -> Reduced:
    """Absolute max pooling: per position, the group's value with the largest magnitude; margin: group mean.

    Uses only arithmetic kernels (no abs/argmax/gather, no boolean masks, which are slow on CPU): with the
    group's running max hi and min lo, the largest magnitude is max(hi, -lo) and its sign is the sign of
    hi + lo (hi + lo >= 0 exactly when |hi| >= |lo|; ties between +a and -a resolve to +a).
    """
    slices = _groups(teacher, guided_inds, num_student)
    m = margin[guided_inds].view(-1, num_student).mean(0)
    if len(slices) == 1:
        return slices[0], m
    # The slices are fresh copies, reused in place: each elementwise pass costs a full feature read/write.
    hi, lo = slices[0], torch.minimum(slices[0], slices[1])
    torch.maximum(hi, slices[1], out=hi)
    for s in slices[2:]:
        torch.maximum(hi, s, out=hi)
        torch.minimum(lo, s, out=lo)
    sign = torch.add(hi, lo, out=slices[1])
    magnitude = torch.maximum(hi, lo.neg_(), out=hi)
    return torch.copysign(magnitude, sign, out=lo), m


def sp(teacher: torch.Tensor, margin: torch.Tensor, guided_inds: torch.Tensor, num_student: int,
       generator: Optional[torch.Generator] = None) -> Reduced:
    """Simple (max) pooling over the group; margin: the group's max."""
    slices = _groups(teacher, guided_inds, num_student)
    reduced = slices[0]
    for s in slices[1:]:
        torch.maximum(reduced, s, out=reduced)
    return reduced, margin[guided_inds].view(-1, num_student).amax(0)


def rd(teacher: torch.Tensor, margin: torch.Tensor, guided_inds: torch.Tensor, num_student: int,
       generator: Optional[torch.Generator] = None) -> Reduced:
    """Random drop: per position one channel of the group at random; margin: one of the group per channel."""
    groups = guided_inds.numel() // num_student
    b, _, h, w = teacher.shape
    stacked = teacher.index_select(1, guided_inds).view(b, groups, num_student, h, w)
    pick = torch.randint(groups, (b, 1, num_student, h, w), device=teacher.device, generator=generator)
    reduced = stacked.gather(1, pick).squeeze(1)
    m = margin[guided_inds].view(groups, num_student)
    m_pick = torch.randint(groups, (1, num_student), device=margin.device, generator=generator)
    return reduced, m.gather(0, m_pick).squeeze(0)


def sm(teacher: torch.Tensor, margin: torch.Tensor, guided_inds: torch.Tensor, num_student: int,
       generator: Optional[torch.Generator] = None) -> Reduced:
    """Sparse matching: only the first sc matched teacher channels, one per student channel."""
    first = guided_inds[:num_student]
    return teacher.index_select(1, first), margin[first]


REDUCERS: Dict[str, Callable[..., Reduced]] = {"amp": amp, "sp": sp, "rd": rd, "sm": sm}


def get_reducer(name: str) -> Callable[..., Reduced]:
    """The reducer called ``name``; ValueError listing the valid names otherwise."""
    if name not in REDUCERS:
        raise ValueError(f"unknown reducer {name!r}; valid reducers: {', '.join(sorted(REDUCERS))}")
    return REDUCERS[name]
