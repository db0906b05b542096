"""Channel matching (MGD Sec. 3.2): running cost statistics, the exact assignment solve, distributed sync.

For a stage with student features S (B, sc, H, W) and teacher features T (B, tc, H, W), every channel is
flattened over space and L2-normalised; the cost of pairing student channel s with teacher channel t is
2 - 2 <S_s, T_t> (squared distance of unit vectors), averaged over the tracked images.

Each teacher channel goes to exactly one student channel and each student channel receives g = tc // sc
teacher channels. When tc % sc == 0 this transportation problem is solved exactly as a linear assignment
on the cost tiled g times into a (tc, tc) square. When tc % sc != 0 the (g*sc, tc) rectangular problem
is solved, which picks the best g*sc teacher channels (the original dropped the last ones instead).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from . import distributed as mdist

__all__ = ["match_channels", "batch_cost_sum", "CostTracker", "SOLVERS", "MatchReport"]

logger = logging.getLogger("mgd")

SOLVERS = ("ortools", "scipy")

#: OR-Tools solves integer costs: the largest |cost| is mapped to this value (about 7 significant digits,
#: the precision of the float32 features the costs come from).
_INTEGER_COST_RANGE = 1e7


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


def _solve_rows_ortools(cost: np.ndarray) -> np.ndarray:
    """Column of each row in a min-cost assignment of a (rows <= cols) matrix, with OR-Tools."""
    from ortools.graph.python import linear_sum_assignment

    rows, cols = cost.shape
    peak = float(np.abs(cost).max()) or 1.0
    scaled = np.rint(cost * (_INTEGER_COST_RANGE / peak)).astype(np.int64)
    if rows < cols:  # zero-cost dummy rows take the teacher channels left unmatched
        scaled = np.vstack([scaled, np.zeros((cols - rows, cols), dtype=np.int64)])
    n = cols
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    solver.add_arcs_with_cost(np.repeat(np.arange(n, dtype=np.int64), n),
                              np.tile(np.arange(n, dtype=np.int64), n), scaled.ravel())
    status = solver.solve()
    if status != solver.OPTIMAL:
        raise RuntimeError(f"OR-Tools linear assignment failed with status {status} on a {rows}x{cols} cost")
    return np.fromiter((solver.right_mate(r) for r in range(rows)), dtype=np.int64, count=rows)


def _solve_rows_scipy(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    row_ind, col_ind = linear_sum_assignment(cost)
    out = np.empty(cost.shape[0], dtype=np.int64)
    out[row_ind] = col_ind
    return out


def match_channels(cost: Union[np.ndarray, torch.Tensor], solver: str = "ortools",
                   groups: Optional[int] = None) -> torch.Tensor:
    """Exact matching of teacher channels to student channels for an (sc, tc) cost.

    Returns a 1-D LongTensor of length ``groups * sc`` (default groups = tc // sc) whose entry k*sc + j
    is the k-th teacher channel of student channel j; all entries are distinct. ``groups=1`` gives the
    sparse matching (one teacher channel per student channel). ``solver`` is "ortools" (default) or
    "scipy"; both are exact.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    if isinstance(cost, torch.Tensor):
        cost = cost.detach().cpu().double().numpy()
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.size == 0:
        raise ValueError(f"cost must be a non-empty 2-D (student, teacher) matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost contains NaN or infinite values")
    sc, tc = cost.shape
    if sc > tc:
        raise ValueError(
            f"the student stage has more channels ({sc}) than the teacher stage ({tc}); MGD reduces teacher "
            "channels to the student's count, so each teacher stage must be at least as wide"
        )
    max_groups = tc // sc
    groups = max_groups if groups is None else int(groups)
    if not 1 <= groups <= max_groups:
        raise ValueError(f"groups must be between 1 and tc // sc = {max_groups}, got {groups}")
    tiled = np.tile(cost, (groups, 1))  # row k*sc + j is student channel j
    solve = _solve_rows_ortools if solver == "ortools" else _solve_rows_scipy
    return torch.from_numpy(solve(tiled))


@dataclass
class MatchReport:
    """What one stage's solve did, for logs and tests."""
    stage: int
    shape: tuple
    seconds: float
    mean_cost: float


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
              groups: Sequence[Optional[int]], solver: str = "ortools") -> tuple:
        """(indices per stage, reports): sums reduced over ranks, solved on rank 0, broadcast to all.

        ``shapes[i]`` is the (sc, tc) of stage ``stages[i]``; a rank that saw no batch contributes zeros.
        Raises the same error on every rank (no rank is left waiting in a collective) when no image was
        tracked anywhere, when any rank saw non-finite features, or when the solver fails.
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
        sums = []
        for stage, shape in zip(stages, shapes):
            s = self.sums[stage]
            if s is None:
                s = torch.zeros(shape, dtype=torch.float64, device=device)
            sums.append(mdist.all_reduce_sum(s))

        results: List[torch.Tensor] = []
        reports: List[MatchReport] = []
        error = None
        if mdist.is_main_process():
            try:
                for stage, s, g in zip(stages, sums, groups):
                    mean = s / total_images
                    start = time.perf_counter()
                    inds = match_channels(mean, solver=solver, groups=g)
                    seconds = time.perf_counter() - start
                    sc = mean.shape[0]
                    rows = torch.arange(inds.numel()) % sc
                    matched = mean.cpu()[rows, inds].mean().item()
                    reports.append(MatchReport(stage, tuple(mean.shape), seconds, matched))
                    results.append(inds.to(device))
            except Exception as exc:  # told to every rank below, re-raised here
                error = exc
        status = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=device)
        mdist.broadcast(status)
        if status.item() != 0:
            if error is not None:
                raise error
            raise RuntimeError("the channel matching failed on rank 0; see its log")
        if not mdist.is_main_process():
            for s, g in zip(sums, groups):
                sc, tc = s.shape
                results.append(torch.empty((g or tc // sc) * sc, dtype=torch.long, device=device))
        for inds in results:
            mdist.broadcast(inds)
        return results, reports
