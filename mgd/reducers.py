"""Channel reducers: teacher (B, tc, H, W) -> (B, sc, H, W) and margins (tc,) -> (sc,) (MGD Sec. 3.3).

``guided_inds`` has length g*sc; entry k*sc + j is the k-th teacher channel matched to student channel j,
so ``guided_inds[k*sc:(k+1)*sc]`` are the teacher channels of group k. Each reducer is a pure function,
vectorized over batch, space and channels; the only Python loop runs over the g groups (g = tc // sc is 1-8
in practice) and does one elementwise op per group instead of stacking and arg-reducing.
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

    Uses |hi| >= |lo|  <=>  hi + lo >= 0 for the group's running max hi and min lo, so no abs, argmax
    or gather is needed (ties between +a and -a resolve to +a).
    """
    slices = _groups(teacher, guided_inds, num_student)
    hi = lo = slices[0]
    for s in slices[1:]:
        hi = torch.maximum(hi, s)
        lo = torch.minimum(lo, s)
    reduced = hi if len(slices) == 1 else torch.where(hi + lo >= 0, hi, lo)
    return reduced, margin[guided_inds].view(-1, num_student).mean(0)


def sp(teacher: torch.Tensor, margin: torch.Tensor, guided_inds: torch.Tensor, num_student: int,
       generator: Optional[torch.Generator] = None) -> Reduced:
    """Simple (max) pooling over the group; margin: the group's max."""
    slices = _groups(teacher, guided_inds, num_student)
    reduced = slices[0]
    for s in slices[1:]:
        reduced = torch.maximum(reduced, s)
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
