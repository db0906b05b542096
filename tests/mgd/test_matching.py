import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ortools.graph.python import min_cost_flow

from mgd.matching import batch_cost_sum, match_channels


def _cost_of(cost, inds):
    sc = cost.shape[0]
    return float(sum(cost[r % sc, c] for r, c in enumerate(inds.tolist())))


def _brute_force(cost, groups):
    """Best assignment of distinct teacher columns, `groups` per student row, by enumeration."""
    sc, tc = cost.shape
    best = np.inf
    for cols in itertools.permutations(range(tc), groups * sc):
        best = min(best, sum(cost[r % sc, c] for r, c in enumerate(cols)))
    return best


def _transportation_optimum(cost):
    """Each teacher to one student, each student tc//sc teachers, as a min-cost flow (integer costs)."""
    sc, tc = cost.shape
    scaled = np.rint(cost * 1e6).astype(np.int64)
    flow = min_cost_flow.SimpleMinCostFlow()
    tails = np.repeat(np.arange(sc), tc)
    heads = np.tile(np.arange(tc), sc) + sc
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, np.ones(sc * tc, np.int64), scaled.ravel())
    supplies = np.concatenate([np.full(sc, tc // sc), -np.ones(tc, np.int64)])
    flow.set_nodes_supplies(np.arange(sc + tc), supplies)
    assert flow.solve() == flow.OPTIMAL
    return flow.optimal_cost() / 1e6


@pytest.mark.parametrize("solver", ["ortools", "scipy"])
@pytest.mark.parametrize("sc,tc", [(2, 4), (3, 3), (2, 6), (3, 6), (2, 5), (3, 7), (3, 4)])
def test_matching_is_optimal_against_brute_force(solver, sc, tc):
    rng = np.random.default_rng(sc * 10 + tc)
    cost = rng.random((sc, tc))
    inds = match_channels(cost, solver=solver)
    g = tc // sc
    assert inds.dtype == torch.long and inds.shape == (g * sc,)
    assert len(set(inds.tolist())) == g * sc  # every teacher channel used at most once
    assert _cost_of(cost, inds) == pytest.approx(_brute_force(cost, g), abs=1e-5)


def test_tiled_assignment_equals_transportation_optimum():
    rng = np.random.default_rng(1)
    cost = rng.random((16, 64))
    inds = match_channels(cost)
    assert sorted(inds.tolist()) == list(range(64))  # every teacher channel assigned exactly once
    counts = np.bincount(np.arange(64) % 16)
    assert (counts == 4).all()
    assert _cost_of(cost, inds) == pytest.approx(_transportation_optimum(cost), abs=1e-4)


def test_non_divisible_picks_the_best_subset_not_the_first_columns():
    # The cheap teacher channels are the last ones: shaving the last columns (the original) would miss them.
    cost = np.full((2, 5), 10.0)
    cost[:, 3:] = 1.0
    cost[0, 0] = 5.0
    inds = match_channels(cost)  # g = 2: 4 of 5 teacher channels
    assert _cost_of(cost, inds) == pytest.approx(_brute_force(cost, 2))
    assert 3 in inds.tolist() and 4 in inds.tolist()
    shaved = match_channels(cost[:, :4])
    assert _cost_of(cost, inds) < _cost_of(cost[:, :4], shaved)


def test_ortools_equals_scipy_in_cost_on_a_larger_problem():
    rng = np.random.default_rng(2)
    cost = 2 - 2 * rng.random((64, 192))
    a = match_channels(torch.from_numpy(cost), solver="ortools")
    b = match_channels(cost, solver="scipy")
    assert _cost_of(cost, a) == pytest.approx(_cost_of(cost, b), abs=1e-4)


def test_sparse_matching_groups_one():
    cost = np.array([[3.0, 1.0, 2.0, 9.0], [1.0, 5.0, 0.5, 9.0]])
    assert match_channels(cost, groups=1).tolist() == [1, 2]


def test_bad_costs_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="more channels"):
        match_channels(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="unknown solver"):
        match_channels(np.zeros((2, 2)), solver="hungarian")
    with pytest.raises(ValueError, match="NaN"):
        match_channels(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="groups"):
        match_channels(np.zeros((2, 4)), groups=3)


def test_batch_cost_sum_equals_the_original_bmm_formula():
    s = torch.randn(5, 6, 4, 3)
    t = torch.randn(5, 12, 4, 3)
    sn = F.normalize(s.reshape(5, 6, -1), dim=2)
    tn = F.normalize(t.reshape(5, 12, -1), dim=2)
    expected = (2 - 2 * torch.bmm(sn, tn.transpose(1, 2))).sum(0)
    got = batch_cost_sum(s, t)
    assert got.dtype == torch.float64 and got.shape == (6, 12)
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)


def test_batch_cost_sum_is_float32_under_autocast():
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = batch_cost_sum(s, t)
    torch.testing.assert_close(got, batch_cost_sum(s, t))


def test_batch_cost_sum_rejects_spatial_mismatch():
    with pytest.raises(ValueError, match="spatial"):
        batch_cost_sum(torch.randn(2, 4, 3, 3), torch.randn(2, 8, 6, 6))
