"""Channel matching (MGD Sec. 3.2-3.3): the cost statistics (:mod:`.cost`), the exact solvers and their canonical
order (:mod:`.solvers`), what a matching buys (:mod:`.report`), the reducers (:mod:`.reducers`) and the
periodic update pass (:mod:`.update`, the original's ``mgd_update``)."""
from .cost import CostTracker, batch_cost_sum
from .reducers import REDUCERS, get_reducer
from .report import (MatchReport, assignment_order, changed_fraction, matched_cost, random_assignment_cost,
                     student_of_teacher)
from .solvers import SOLVERS, canonical_order, match_channels
from .update import mgd_update

__all__ = ["match_channels", "canonical_order", "SOLVERS", "batch_cost_sum", "CostTracker", "MatchReport",
           "matched_cost", "random_assignment_cost", "student_of_teacher", "changed_fraction", "assignment_order",
           "REDUCERS", "get_reducer", "mgd_update"]
