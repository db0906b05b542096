"""The exact assignment solvers (MGD Sec. 3.2) and the canonical order of their indices.

Each teacher channel goes to exactly one student channel and each student channel receives g = tc // sc
teacher channels. When tc % sc == 0 this transportation problem is solved exactly as a linear assignment
on the cost tiled g times into a (tc, tc) square. When tc % sc != 0 the (g*sc, tc) rectangular problem
is solved, which picks the best g*sc teacher channels (the original dropped the last ones instead).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

__all__ = ["SOLVERS", "match_channels", "canonical_order"]

SOLVERS = ("ortools", "scipy")

#: OR-Tools solves integer costs: the largest |cost| is mapped to this value (about 7 significant digits,
#: the precision of the float32 features the costs come from).
_INTEGER_COST_RANGE = 1e7


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
