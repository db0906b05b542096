"""Matching solve: mgd.match_channels vs the original per-arc OR-Tools build, side by side.

    python benchmarks/bench_matching.py [--sc 1024 --tc 2048]

The cost is realistic: 2 - 2 cos between L2-normalised student and teacher channels, the student built
as sparse mixtures of teacher channels plus noise. The baseline is the original's formulation
(tile the cost, one add_arc_with_cost call per arc, then solve), ported to the current OR-Tools API.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import Results, add_save_argument, best_of, report  # noqa: E402

from mgd.matching import match_channels  # noqa: E402


def realistic_cost(sc, tc, hw=1568, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((tc, hw)).astype(np.float32)
    mix = rng.standard_normal((sc, tc)).astype(np.float32) * (rng.random((sc, tc)) < 0.01)
    s = mix @ t + 3 * rng.standard_normal((sc, hw)).astype(np.float32)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return (2 - 2 * s @ t.T).astype(np.float64)


def original_per_arc(cost):
    from ortools.graph.python import linear_sum_assignment
    sc, tc = cost.shape
    tiled = np.concatenate([cost for _ in range(tc // sc)], axis=0)
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    rows, cols = tiled.shape
    for r in range(rows):
        for c in range(cols):
            solver.add_arc_with_cost(r, c, int(1e5 * tiled[r][c]))
    assert solver.solve() == solver.OPTIMAL
    return [solver.right_mate(n) for n in range(solver.num_nodes())]


def transportation_min_cost_flow(cost):
    """The exact transportation form with sc*tc arcs (measured for the record; not faster here)."""
    from ortools.graph.python import min_cost_flow
    sc, tc = cost.shape
    scaled = np.rint(cost * 1e7 / np.abs(cost).max()).astype(np.int64)
    flow = min_cost_flow.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(np.repeat(np.arange(sc), tc), np.tile(np.arange(tc), sc) + sc,
                                              np.ones(sc * tc, np.int64), scaled.ravel())
    flow.set_nodes_supplies(np.arange(sc + tc), np.concatenate([np.full(sc, tc // sc), -np.ones(tc, np.int64)]))
    assert flow.solve() == flow.OPTIMAL


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sc", type=int, default=1024)
    parser.add_argument("--tc", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    add_save_argument(parser)
    args = parser.parse_args()
    results = Results(["what", "original formulation", "mgd", "speed-up"])
    cost = realistic_cost(args.sc, args.tc)
    print(f"cost {args.sc}x{args.tc}, values {cost.min():.3f}..{cost.max():.3f}")
    base = best_of(lambda: original_per_arc(cost), repeat=args.repeat)
    ours = best_of(lambda: match_channels(cost, solver="ortools"), repeat=args.repeat)
    ours_scipy = best_of(lambda: match_channels(cost, solver="scipy"), repeat=args.repeat)
    flow = best_of(lambda: transportation_min_cost_flow(cost), repeat=args.repeat)
    report(f"match_channels, {args.sc}x{args.tc} cost, OR-Tools", base, ours, target=4, results=results)
    report("match_channels, same, scipy", base, ours_scipy, results=results)
    report("transportation as OR-Tools min-cost flow (not used)", base, flow, results=results)
    odd = realistic_cost(args.sc - 64, args.tc)
    results.note(f"Non-divisible {odd.shape[0]}x{odd.shape[1]}: OR-Tools "
                 f"{best_of(lambda: match_channels(odd), repeat=args.repeat) * 1e3:.1f} ms, scipy "
                 f"{best_of(lambda: match_channels(odd, solver='scipy'), repeat=args.repeat) * 1e3:.1f} ms.")
    results.save(args, "the original formulation builds the assignment graph arc by arc")


if __name__ == "__main__":
    main()
