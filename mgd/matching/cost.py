"""The matching cost (MGD Sec. 3.2): running statistics per stage, reduced over ranks, solved on one.

For a stage with student features S (B, sc, H, W) and teacher features T (B, tc, H, W), every channel is
flattened over space and L2-normalised; the cost of pairing student channel s with teacher channel t is
2 - 2 <S_s, T_t> (squared distance of unit vectors), averaged over the tracked images.

Each teacher channel goes to exactly one student channel and each student channel receives g = tc // sc
teacher channels. When tc % sc == 0 this transportation problem is solved exactly as a linear assignment
on the cost tiled g times into a (tc, tc) square. When tc % sc != 0 the (g*sc, tc) rectangular problem
is solved, which picks the best g*sc teacher channels (the original dropped the last ones instead).

Each solve also reports what the matching buys and how much it moves (:class:`MatchReport`): the mean
matched cost beside the mean cost of a random assignment of the same shape, and the fraction of teacher
channels whose student changed since the previous matching.
"""
from __future__ import annotations

import logging
import time
from typing import List, Optional, Sequence, Tuple

import torch

from .. import distributed as mdist
from .report import MatchReport, stage_report
from .solvers import match_channels

__all__ = ["batch_cost_sum", "CostTracker"]

logger = logging.getLogger("mgd")


def _unit_channels_major(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (C, B*H*W) with every (image, channel) row of H*W values L2-normalised.

    The division writes straight into the channel-major layout, so normalising and transposing cost one
    pass over the feature instead of two copies.
    """
    b, c = x.shape[:2]
    flat = x.detach().float().reshape(b, c, -1)
    norms = torch.linalg.vector_norm(flat, dim=2, keepdim=True).clamp_min_(1e-12)
    out = torch.empty((c, b, flat.shape[2]), dtype=flat.dtype, device=flat.device)
    torch.div(flat.transpose(0, 1), norms.transpose(0, 1), out=out)
    return out.view(c, -1)


def batch_cost_sum(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the (sc, tc) matching cost, in float64, with one matmul.

    sum_b (2 - 2 S_b T_b^T) = 2 B - 2 (S as (sc, B*HW)) @ (T as (B*HW, tc)): one GEMM instead of the
    original's (B, sc, tc) bmm followed by a sum, computed in float32 even under autocast.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} must share batch "
            "and spatial size; ignore this stage (ignore_inds) or capture other layers"
        )
    with torch.autocast(device_type=student.device.type, enabled=False):
        dots = _unit_channels_major(student) @ _unit_channels_major(teacher).t()
    return (2.0 * student.shape[0]) - 2.0 * dots.double()


class CostTracker:
    """Running (sc, tc) cost sums per stage and the image count, kept on the features' device.

    ``add`` costs one GEMM per stage and never copies to the host; ``solve`` all-reduces the sums and the
    counts over the process group (if any), solves on rank 0 and broadcasts the indices so that every rank
    ends with identical matchings.
    """

    def __init__(self, num_stages: int) -> None:
        self.num_stages = num_stages
        self.reset()

    def reset(self) -> None:
        self.sums: List[Optional[torch.Tensor]] = [None] * self.num_stages
        self.num_images = 0
        self.nonfinite: List[int] = []

    def add(self, stage: int, student: torch.Tensor, teacher: torch.Tensor) -> None:
        cost = batch_cost_sum(student, teacher)
        if not bool(torch.isfinite(cost).all()):
            self.nonfinite.append(stage)
            return
        if self.sums[stage] is None:
            self.sums[stage] = cost
        else:
            self.sums[stage] += cost

    def add_images(self, count: int) -> None:
        self.num_images += int(count)

    def solve(self, stages: Sequence[int], shapes: Sequence[tuple], device: torch.device,
              groups: Sequence[Optional[int]], solver: str = "ortools",
              previous: Optional[Sequence[Optional[torch.Tensor]]] = None) -> Tuple[List[torch.Tensor], List[MatchReport]]:
        """(indices per stage, reports): sums reduced over ranks, solved on rank 0, broadcast to all.

        ``shapes[i]`` is the (sc, tc) of stage ``stages[i]``; a rank that saw no batch contributes zeros.
        ``previous[i]``: that stage's indices before this update (None: no matching yet), for the stability
        in the reports. The reports are the same on every rank (computed from the reduced sums and the
        broadcast indices; the solve times are rank 0's). Raises the same error on every rank (no rank is left
        waiting in a collective) when no image was tracked anywhere, when any rank saw non-finite features, or
        when the solver fails.
        """
        counts = torch.tensor([self.num_images, len(self.nonfinite)], dtype=torch.float64, device=device)
        mdist.all_reduce_sum(counts)
        total_images, nonfinite = int(counts[0].item()), int(counts[1].item())
        if nonfinite:
            bad = sorted(set(self.nonfinite))
            raise RuntimeError(
                f"non-finite teacher or student features during the matching update ({nonfinite} batch-stage(s)"
                f"{', e.g. stage ' + str(bad[0]) if bad else ' on another rank'}); the previous matching is kept"
            )
        if total_images == 0:
            raise ValueError("the matching update saw no images: the loader is empty (on every rank)")
        means = []
        for stage, shape in zip(stages, shapes):
            s = self.sums[stage]
            if s is None:
                s = torch.zeros(shape, dtype=torch.float64, device=device)
            means.append(mdist.all_reduce_sum(s) / total_images)

        results, seconds, error = self._solve_on_main(means, groups, solver, device)
        status = torch.tensor([0.0 if error is None else 1.0, *seconds], dtype=torch.float64, device=device)
        mdist.broadcast(status)
        if status[0].item() != 0:
            if error is not None:
                raise error
            raise RuntimeError("the channel matching failed on rank 0; see its log")
        if not mdist.is_main_process():
            for mean, g in zip(means, groups):
                sc, tc = mean.shape
                results.append(torch.empty((g or tc // sc) * sc, dtype=torch.long, device=device))
        for inds in results:
            mdist.broadcast(inds)
        previous = list(previous) if previous is not None else [None] * len(stages)
        reports = [stage_report(stage, mean, inds, secs, prev) for stage, mean, inds, secs, prev
                   in zip(stages, means, results, status[1:].tolist(), previous)]
        return results, reports

    @staticmethod
    def _solve_on_main(means: Sequence[torch.Tensor], groups: Sequence[Optional[int]], solver: str,
                       device: torch.device) -> Tuple[List[torch.Tensor], List[float], Optional[Exception]]:
        """On rank 0: (indices, solve seconds per stage, the error if one stage failed); elsewhere nothing
        (the seconds are zeros, to be overwritten by rank 0's in one broadcast)."""
        results: List[torch.Tensor] = []
        seconds = [0.0] * len(means)
        if not mdist.is_main_process():
            return results, seconds, None
        try:
            for n, (mean, g) in enumerate(zip(means, groups)):
                start = time.perf_counter()
                results.append(match_channels(mean, solver=solver, groups=g).to(device))
                seconds[n] = time.perf_counter() - start
        except Exception as exc:  # told to every rank by the caller, re-raised there
            return results, seconds, exc
        return results, seconds, None
