"""Channel matching (MGD Sec. 3.2): running cost statistics, the exact assignment solve, distributed sync.

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
import math
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import distributed as mdist

__all__ = ["match_channels", "batch_cost_sum", "CostTracker", "SOLVERS", "MatchReport", "random_assignment_cost",
           "matched_cost", "student_of_teacher", "changed_fraction", "assignment_order", "canonical_order"]

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
    is the k-th teacher channel of student channel j; all entries are distinct. The indices are in
    :func:`canonical_order` (each student channel's teacher channels ascending over k), so both solvers give
    the same indices for the same cost wherever the optimum is unique up to the order within the groups. ``groups=1`` gives the
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
    return torch.from_numpy(canonical_order(solve(tiled), sc))


def canonical_order(inds: np.ndarray, num_student: int) -> np.ndarray:
    """The one order of an assignment's indices that does not depend on the solver: within each student
    channel, its g teacher channels ascending (entry k*sc + j is the k-th smallest teacher channel of student j).

    The g rows of the tiled (g*sc, tc) problem that belong to one student channel are interchangeable, so every
    optimum comes with g! equivalent ones per student channel that differ only in which teacher channel sits in
    group k. Which of them a solver returns depends on its tie-breaking, and so on the last bits of the cost
    (another CPU's float kernels): the ``amp``, ``sp`` and ``sm`` reducers are symmetric over the group, but
    ``rd`` picks the channel at a random group position, so its loss changed with the machine. Sorting each
    student's channels fixes the order; the set of teacher channels of every student channel, the matched cost
    and every reducer's distribution are unchanged.
    """
    inds = np.asarray(inds, dtype=np.int64)
    groups = inds.size // num_student
    return np.ascontiguousarray(np.sort(inds.reshape(groups, num_student), axis=0).reshape(-1))


def matched_cost(cost: torch.Tensor, inds: torch.Tensor) -> float:
    """Mean cost of the matched (student, teacher) pairs: entry k*sc + j of ``inds`` is paired with row j."""
    rows = torch.arange(inds.numel()) % cost.shape[0]
    return cost.cpu()[rows, inds.cpu()].double().mean().item()


def random_assignment_cost(cost: torch.Tensor) -> float:
    """Expected :func:`matched_cost` of a uniformly random assignment of the same shape: the mean of ``cost``.

    Whatever the number of groups, each row of the tiled problem is given a uniformly random teacher column,
    so every matched entry has expectation mean_t cost[j, t] and their mean is the mean of all entries. It is
    the baseline that says what the matching buys (0 for the matched cost would be a perfect copy).
    """
    return cost.double().mean().item()


def student_of_teacher(inds: torch.Tensor, num_student: int, num_teacher: int) -> torch.Tensor:
    """(tc,) LongTensor: the student channel each teacher channel is matched to, -1 for unmatched ones
    (teacher channel ``inds[k*sc + j]`` goes to student j)."""
    inds = inds.detach().cpu().long()
    out = torch.full((num_teacher,), -1, dtype=torch.long)
    valid = inds >= 0
    out[inds[valid]] = (torch.arange(inds.numel()) % num_student)[valid]
    return out


def changed_fraction(previous: Optional[torch.Tensor], current: torch.Tensor, num_student: int,
                     num_teacher: int) -> Optional[float]:
    """Stability of the matching: the fraction of teacher channels matched now whose student differs from the
    previous matching's (a channel unmatched before counts as changed). None when there is no previous
    matching (the first update, or unset indices): there is nothing to compare with yet.

    The order of the g teacher channels of one student does not matter to the reducers, so only the student
    each teacher channel feeds is compared.
    """
    if previous is None or previous.numel() != current.numel() or int(previous.min()) < 0:
        return None
    before = student_of_teacher(previous, num_student, num_teacher)
    after = student_of_teacher(current, num_student, num_teacher)
    matched = after >= 0
    return (before[matched] != after[matched]).double().mean().item()


def assignment_order(inds: torch.Tensor, num_student: int, num_teacher: int) -> torch.Tensor:
    """Teacher columns ordered by the assignment: the g channels of student 0, then of student 1, ..., then
    the unmatched ones; indexing an (sc, tc) cost with it puts the matched entries on diagonal blocks."""
    inds = inds.detach().cpu().long()
    groups = inds.numel() // num_student
    ordered = inds.view(groups, num_student).t().reshape(-1)  # student-major: row j, its g teachers
    unmatched = torch.ones(num_teacher, dtype=torch.bool)
    unmatched[ordered] = False
    return torch.cat([ordered, unmatched.nonzero().flatten()])


@dataclass
class MatchReport:
    """What one stage's solve did, for logs, the run's JSON log and the plots (identical on every rank)."""
    stage: int
    shape: tuple
    seconds: float  # rank 0's solve time
    mean_cost: float  # mean cost of the matched pairs
    random_cost: float = math.nan  # expected mean cost of a random assignment (the mean of the cost matrix)
    changed: Optional[float] = None  # fraction of teacher channels whose student changed; None: first matching
    cost: Optional[torch.Tensor] = field(default=None, repr=False)  # the (sc, tc) mean cost, CPU float32


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
        reports = [_report(stage, mean, inds, secs, prev) for stage, mean, inds, secs, prev
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


def _report(stage: int, mean: torch.Tensor, inds: torch.Tensor, seconds: float,
            previous: Optional[torch.Tensor]) -> MatchReport:
    """One stage's report; the mean cost is kept as CPU float32 (at most a few MB per stage) for the plots."""
    cost = mean.cpu()
    sc, tc = cost.shape
    return MatchReport(stage, (sc, tc), seconds, matched_cost(cost, inds), random_assignment_cost(cost),
                       changed_fraction(previous, inds, sc, tc), cost.float())
