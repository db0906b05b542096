import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ortools.graph.python import min_cost_flow

from mgd.matching import (CostTracker, assignment_order, batch_cost_sum, changed_fraction, match_channels, matched_cost,
                          random_assignment_cost, student_of_teacher)


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


@pytest.mark.parametrize("sc, tc, groups", [(2, 4, 2), (2, 5, 2), (3, 6, 1)])
def test_random_assignment_cost_is_the_exact_expectation_over_all_assignments(sc, tc, groups):
    """Every ordered choice of g*sc distinct teacher columns is one assignment; their mean matched cost is the
    mean of the whole matrix, also when tc % sc != 0 and for the sparse matching."""
    cost = torch.rand(sc, tc, dtype=torch.float64, generator=torch.Generator().manual_seed(sc * tc))
    costs = [matched_cost(cost, torch.tensor(cols)) for cols in itertools.permutations(range(tc), groups * sc)]
    assert random_assignment_cost(cost) == pytest.approx(np.mean(costs), abs=1e-12)
    assert random_assignment_cost(cost) == pytest.approx(cost.mean().item(), abs=1e-12)


def test_random_assignment_cost_matches_an_empirical_mean_over_random_permutations():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 16, generator=gen) * 4
    samples = torch.tensor([matched_cost(cost, torch.randperm(16, generator=gen)) for _ in range(4000)])
    stderr = samples.std().item() / len(samples) ** 0.5
    assert abs(samples.mean().item() - random_assignment_cost(cost)) < 4 * stderr
    assert matched_cost(cost, match_channels(cost)) < samples.min().item() + 1e-6  # the optimum beats them all


def test_stability_is_zero_for_the_same_matching_and_the_moved_fraction_for_a_hand_made_change():
    sc, tc = 2, 6
    inds = torch.tensor([0, 1, 2, 3, 4, 5])  # student 0: teachers 0, 2, 4; student 1: teachers 1, 3, 5
    assert student_of_teacher(inds, sc, tc).tolist() == [0, 1, 0, 1, 0, 1]
    assert changed_fraction(inds, inds.clone(), sc, tc) == 0.0
    assert changed_fraction(inds, torch.tensor([4, 5, 2, 3, 0, 1]), sc, tc) == 0.0  # order within a group
    swapped = torch.tensor([1, 0, 2, 3, 4, 5])  # teachers 0 and 1 trade students
    assert changed_fraction(inds, swapped, sc, tc) == pytest.approx(2 / 6)
    assert changed_fraction(None, inds, sc, tc) is None  # the first matching: nothing to compare
    assert changed_fraction(torch.full((6,), -1), inds, sc, tc) is None  # unset indices
    # tc % sc != 0: teacher 6 was unmatched, now takes teacher 5's place: 1 of the 6 matched channels moved
    assert changed_fraction(inds, torch.tensor([0, 1, 2, 3, 4, 6]), sc, 7) == pytest.approx(1 / 6)


def test_assignment_order_puts_the_matched_entries_on_the_diagonal_blocks():
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(3, 7, generator=gen)
    inds = match_channels(cost)  # g = 2, one teacher channel left out
    order = assignment_order(inds, 3, 7)
    assert sorted(order.tolist()) == list(range(7))
    ordered = cost[:, order]
    blocks = torch.stack([ordered[j, 2 * j:2 * j + 2] for j in range(3)])
    assert blocks.mean().item() == pytest.approx(matched_cost(cost, inds))


def test_solve_reports_matched_random_and_changed_costs():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 2, 3, 3, generator=gen), torch.randn(5, 4, 3, 3, generator=gen)
    tracker = CostTracker(1)
    tracker.add(0, s, t)
    tracker.add_images(5)
    (inds,), (report,) = tracker.solve([0], [(2, 4)], torch.device("cpu"), [None], previous=[None])
    mean = batch_cost_sum(s, t) / 5
    assert report.cost.dtype == torch.float32 and torch.allclose(report.cost.double(), mean, atol=1e-6)
    assert report.random_cost == pytest.approx(mean.mean().item())
    assert report.mean_cost == pytest.approx(matched_cost(mean, inds)) and report.mean_cost < report.random_cost
    assert report.changed is None and report.seconds >= 0
    tracker.add(0, s, t)
    tracker.add_images(5)
    moved = inds[[1, 0, 2, 3]]
    _, (again,) = tracker.solve([0], [(2, 4)], torch.device("cpu"), [None], previous=[moved])
    assert again.changed == pytest.approx(0.5)  # two of the four teacher channels had another student before


def _reports_worker(rank, init_file, out_dir):
    """Two updates on 2 gloo ranks that see different images; what each rank would log and save."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(rank)
        tracker = CostTracker(1)
        summaries, previous = [], [None]
        for _ in range(2):
            tracker.reset()
            tracker.add(0, torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 6, 4, 4, generator=gen))
            tracker.add_images(3)
            (inds,), (report,) = tracker.solve([0], [(2, 6)], torch.device("cpu"), [None], previous=previous)
            previous = [inds]
            summaries.append((report.mean_cost, report.random_cost, report.changed, report.seconds, report.cost, inds))
        torch.save(summaries, os.path.join(out_dir, f"reports{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_reports_are_the_same_on_every_rank(tmp_path):
    """Every rank logs the same numbers and could save the same matrices (only rank 0 writes them)."""
    mp.spawn(_reports_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"reports{r}.pt") for r in range(2))
    for a, b in zip(first, second):
        assert a[:4] == b[:4] and torch.equal(a[4], b[4]) and torch.equal(a[5], b[5])
    assert first[0][2] is None and first[1][2] is not None


def _planted_cost(sc, tc, groups, seed):
    """An integer-valued (sc, tc) cost full of ties whose optimum is unique up to the order within the groups:
    a planted assignment (each student channel `groups` teacher channels) costs 0, every other entry 1..3."""
    rng = np.random.default_rng(seed)
    cost = rng.integers(1, 4, size=(sc, tc)).astype(np.float64)
    teachers = rng.permutation(tc)[:groups * sc]
    cost[np.arange(groups * sc) % sc, teachers] = 0.0
    planted = [sorted(teachers[j::sc].tolist()) for j in range(sc)]
    return cost, planted


def _last_bit_perturbed(cost, rng):
    """The same cost with a random third of its entries moved by one unit in the last place, up or down."""
    out = cost.copy()
    moved = rng.random(cost.shape) < 1 / 3
    up = rng.random(cost.shape) < 0.5
    out[moved & up] = np.nextafter(out[moved & up], np.inf)
    out[moved & ~up] = np.nextafter(out[moved & ~up], -np.inf)
    return out


@pytest.mark.parametrize("sc,tc", [(4, 12), (8, 32), (5, 13), (16, 64)])
def test_ties_and_last_bit_noise_give_the_same_canonical_indices_from_both_solvers(sc, tc):
    """The g! equivalent optima per student channel (which copy of the tiled row is group k) are resolved into one
    order, each student's teacher channels ascending, whatever the solver and the last bits of the cost."""
    g = tc // sc
    cost, planted = _planted_cost(sc, tc, g, seed=sc * tc)
    expected = [planted[j][k] for k in range(g) for j in range(sc)]
    rng = np.random.default_rng(0)
    for trial in range(6):
        noisy = cost if trial == 0 else _last_bit_perturbed(cost, rng)
        for solver in ("ortools", "scipy"):
            assert match_channels(noisy, solver=solver).tolist() == expected, (solver, trial)


def test_a_cost_tiled_from_a_smaller_one_gives_each_student_all_copies_of_its_channel_in_ascending_order():
    """Teacher channels c, c + 4, c + 8 are exact copies: every student takes the three copies of its cheapest
    channel, in one order from both solvers, also with the rows shuffled and the last bits moved."""
    base = np.array([[0.0, 2, 1, 3], [1, 0, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]]) + 0.25  # unique optimum: diagonal
    cost = np.tile(base, (1, 3))
    rng = np.random.default_rng(1)
    for trial in range(5):
        noisy = cost if trial == 0 else _last_bit_perturbed(cost, rng)
        for solver in ("ortools", "scipy"):
            inds = match_channels(noisy, solver=solver).view(3, 4)
            assert inds.t().tolist() == [[j, j + 4, j + 8] for j in range(4)], (solver, trial)


def test_canonical_order_sorts_each_students_channels_and_keeps_their_sets():
    from mgd.matching import canonical_order

    inds = np.array([9, 2, 7, 1, 4, 8, 3, 0, 6])  # sc = 3: student 0 has 9, 1, 3; student 1: 2, 4, 0; 2: 7, 8, 6
    out = canonical_order(inds, 3)
    assert out.tolist() == [1, 0, 6, 3, 2, 7, 9, 4, 8]
    assert student_of_teacher(torch.from_numpy(out), 3, 10).tolist() == \
        student_of_teacher(torch.from_numpy(inds), 3, 10).tolist()
