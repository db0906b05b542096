"""What a matching buys and how much it moves: matched vs random cost, stability, the assignment's order
(for the logs, the run's JSON log and :mod:`mgd.tools.plot`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["MatchReport", "matched_cost", "random_assignment_cost", "student_of_teacher", "changed_fraction",
           "assignment_order", "stage_report"]


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


def stage_report(stage: int, mean: torch.Tensor, inds: torch.Tensor, seconds: float,
            previous: Optional[torch.Tensor]) -> MatchReport:
    """One stage's report; the mean cost is kept as CPU float32 (at most a few MB per stage) for the plots."""
    cost = mean.cpu()
    sc, tc = cost.shape
    return MatchReport(stage, (sc, tc), seconds, matched_cost(cost, inds), random_assignment_cost(cost),
                       changed_fraction(previous, inds, sc, tc), cost.float())
