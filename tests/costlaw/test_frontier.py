"""Tests for costlaw.frontier: Pareto sets against brute force, loss-cost curves and the optimal-heads table."""

import math

import numpy as np
import pytest

from costlaw.costs import inference_flops, inference_memory
from costlaw.frontier import format_table, frontier, loss_cost_curves, optimal_heads_table, pareto_front
from costlaw.laws import LossLaw
from costlaw.search import recommend, solve_shape


def brute_force_front(points):
    points = np.asarray(points, dtype=float)
    keep = []
    for i, (c, l) in enumerate(points):
        dominated = any(c2 <= c and l2 <= l and (c2 < c or l2 < l) for c2, l2 in points)
        if not dominated:
            keep.append(i)
    return keep


@pytest.mark.parametrize("integer", [False, True])
def test_pareto_front_matches_brute_force(integer):
    rng = np.random.default_rng()
    for _ in range(30):
        n = int(rng.integers(1, 80))
        points = rng.integers(0, 8, size=(n, 2)) if integer else rng.normal(size=(n, 2))  # integers force ties
        front = pareto_front(points)
        assert sorted(front.tolist()) == brute_force_front(points)
        assert list(points[front, 0]) == sorted(points[front, 0])


def test_pareto_front_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        pareto_front([1.0, 2.0, 3.0])


def laws_for(heads):
    return {h: LossLaw(a=1e8 * (1 + 0.03 * math.log2(32 / h[0]) + 0.04 * math.log2(32 / h[1])), b=0.3, E=1.8)
            for h in heads}


def test_curves_cost_the_built_shapes():
    laws = laws_for([(32, 8), (8, 1), (1, 1)])
    grid = np.geomspace(1e7, 1e10, 12)
    curves = loss_cost_curves(laws, 65536, grid)
    assert set(curves) == set(laws)
    for heads, curve in curves.items():
        assert list(curve.n) == sorted(curve.n) and len(curve.n) == len(set(curve.n))
        assert np.allclose(curve.loss, [laws[heads].loss(n) for n in curve.n], rtol=1e-12)
    shape = solve_shape((8, 1), grid[5])
    curve = curves[(8, 1)]
    k = list(curve.n).index(shape.n_actual)
    assert curve.flops[k] == inference_flops(shape.arch, 65536).total
    assert curve.memory_bytes[k] == inference_memory(shape.arch, 65536).total_bytes


def test_frontier_across_heads_is_the_non_dominated_set():
    laws = laws_for([(32, 32), (32, 8), (8, 1), (1, 1)])
    curves = loss_cost_curves(laws, 131072, np.geomspace(1e7, 1e10, 15))
    for cost in ("flops", "memory"):
        front = frontier(curves, cost)
        everything = [(h, n, l, c) for h, curve in curves.items()
                      for n, l, c in zip(curve.n, curve.loss, curve.flops if cost == "flops" else curve.memory_bytes)]
        keep = brute_force_front([(c, l) for _, _, l, c in everything])
        assert sorted((p.heads, p.n) for p in front) == sorted((everything[i][0], everything[i][1]) for i in keep)
    # At 128K the KV cache dominates memory: the cheap end of the memory frontier has one KV head.
    assert frontier(curves, "memory")[0].heads[1] == 1
    with pytest.raises(ValueError, match="cost"):
        frontier(curves, "time")


def test_optimal_heads_table_and_markdown():
    laws = laws_for([(32, 32), (32, 8), (8, 1), (1, 1)])
    rows = optimal_heads_table(laws, [2.6, 1.5, 3.0], [8192, 131072])
    assert [(r.target_loss, r.context) for r in rows] == [(t, c) for t in (2.6, 1.5, 3.0) for c in (8192, 131072)]
    assert rows[2].recommendation is None and rows[3].recommendation is None
    for row in rows[:2] + rows[4:]:
        assert row.recommendation.winner.heads == recommend(laws, row.target_loss, row.context).winner.heads
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) and lines[4].count("unreachable") == 1
    best = rows[1].recommendation
    assert f"| 2.6 | 131,072 | {best.winner.heads[0]},{best.winner.heads[1]} |" in lines[3]
    assert f"{100 * best.saving('memory'):.1f}%" in lines[3]
