"""Loss-cost frontiers across head configurations, and the table of optimal configurations per (L*, T)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from costlaw.formatting import human_bytes, human_count, human_flops
from costlaw.costs import ObjectiveSpec, inference_flops, inference_memory
from costlaw.laws import Heads, LossLaw
from costlaw.search import Costing, Recommendation, recommend

COSTS = ("flops", "memory")


@dataclass(frozen=True)
class Curve:
    """One head configuration's buildable shapes along a size grid: N, predicted loss and costs at `context`.

    n is the exact non-embedding count of each distinct rounded shape (grid targets that round to
    the same shape appear once); flops are per generated token, memory_bytes weights plus one KV cache.
    """

    heads: Heads
    context: float
    n: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    memory_bytes: np.ndarray


def loss_cost_curves(laws: Mapping[Heads, LossLaw], context: float, n_grid: ArrayLike, *,
                     costing: Costing = Costing()) -> dict[Heads, Curve]:
    """Loss against inference cost at `context` for every law, over the shapes that hold the sizes in n_grid."""
    grid = np.asarray(n_grid, dtype=float)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
        raise ValueError("n_grid must be a non-empty 1-D list of positive, finite parameter counts")
    curves = {}
    for heads, law in sorted(laws.items()):
        shapes = {}
        for n in grid:
            shape = costing.shape(heads, float(n))
            shapes.setdefault(shape.arch, shape)
        rows = []
        for shape in sorted(shapes.values(), key=lambda s: s.n_actual):
            memory = inference_memory(shape.arch, context, param_dtype=costing.param_dtype,
                                      kv_dtype=costing.kv_dtype)
            rows.append((shape.n_actual, law.loss(shape.n_actual), inference_flops(shape.arch, context).total,
                         memory.total_bytes))
        n, loss, flops, memory_bytes = (np.array(column, dtype=float) for column in zip(*rows))
        curves[heads] = Curve(heads, context, n, loss, flops, memory_bytes)
    return curves


def pareto_front(points: ArrayLike) -> np.ndarray:
    """Indices of the non-dominated rows of an (n, 2) array of (cost, loss), by increasing cost.

    A row is dominated when another is no worse in both and better in one; identical rows are all kept.
    """
    array = np.asarray(points, dtype=float)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2) of (cost, loss); got shape {array.shape}")
    order = np.lexsort((array[:, 1], array[:, 0]))
    kept, best = [], None  # best: (cost, loss) of the lowest loss seen at the lowest cost
    for i in order:
        cost, loss = array[i]
        if best is None or loss < best[1]:
            best = (cost, loss)
            kept.append(i)
        elif loss == best[1] and cost == best[0]:
            kept.append(i)
    return np.array(kept, dtype=int)


@dataclass(frozen=True)
class FrontierPoint:
    """A point on the loss-cost frontier across head configurations."""

    heads: Heads
    n: float
    loss: float
    cost: float


def frontier(curves: Mapping[Heads, Curve], cost: str) -> list[FrontierPoint]:
    """The Pareto set of loss against "flops" or "memory" (bytes) over all configurations' curves."""
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is not allowed; allowed: {', '.join(COSTS)}")
    points = [
        FrontierPoint(heads, float(n), float(loss), float(value))
        for heads, curve in sorted(curves.items())
        for n, loss, value in zip(curve.n, curve.loss, curve.flops if cost == "flops" else curve.memory_bytes)
    ]
    if not points:
        return []
    return [points[i] for i in pareto_front([(p.cost, p.loss) for p in points])]


@dataclass(frozen=True)
class TableRow:
    """One cell of the optimal-configuration table: the recommendation for (L*, T), None if no law reaches L*."""

    target_loss: float
    context: float
    recommendation: Recommendation | None


def optimal_heads_table(laws: Mapping[Heads, LossLaw], target_losses: Sequence[float], contexts: Sequence[float], *,
                        objective: ObjectiveSpec = ObjectiveSpec(), rank_by: str = "z", baseline: Heads | None = None,
                        costing: Costing = Costing(),
                        samples: Mapping[Heads, Sequence[LossLaw]] | None = None,
                        confidence: float = 0.95) -> list[TableRow]:
    """The paper's table of optimal configurations: recommend() for every (L*, T), losses outermost.
    With bootstrap samples, the winners' N* and costs carry intervals."""
    if not laws:
        raise ValueError("no loss laws given; fit some first (costlaw fit) or pass a dict of (n_q, n_kv) -> LossLaw")
    rows = []
    for target in target_losses:
        reachable = any(target > law.E for law in laws.values())
        for context in contexts:
            rows.append(TableRow(target, context, recommend(
                laws, target, context, objective=objective, rank_by=rank_by, baseline=baseline, costing=costing,
                samples=samples, confidence=confidence,
            ) if reachable else None))
    return rows


def _with_interval(value: float, intervals, name: str, fmt) -> str:
    bounds = (intervals or {}).get(name)
    if bounds is None or not all(np.isfinite(bounds)):
        return fmt(value)
    return f"{fmt(value)} [{fmt(bounds[0])}, {fmt(bounds[1])}]"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_table(rows: Sequence[TableRow]) -> str:
    """The optimal-configuration table as Markdown; savings are 1 - winner/baseline; [lo, hi] are
    bootstrap intervals where the table was built with samples."""
    lines = [
        "| L* | T | best H | N* | shape L x d | FLOPs/token | memory | Z | baseline | memory saved | FLOPs saved |",
        "|---:|---:|:---:|---:|:---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in rows:
        rec = row.recommendation
        if rec is None:
            lines.append(f"| {row.target_loss:g} | {row.context:,} | unreachable | | | | | | | | |")
            continue
        best = rec.winner
        baseline = "none" if rec.baseline is None else f"{rec.baseline.heads[0]},{rec.baseline.heads[1]}"
        lines.append(
            f"| {row.target_loss:g} | {row.context:,} | {best.heads[0]},{best.heads[1]} "
            f"| {_with_interval(best.n_star, best.intervals, 'n_star', human_count)} "
            f"| {best.shape.arch.num_layers} x {best.shape.arch.d_model} "
            f"| {_with_interval(best.flops, best.intervals, 'flops', human_flops)} "
            f"| {_with_interval(best.memory_bytes, best.intervals, 'memory_bytes', human_bytes)} "
            f"| {_with_interval(best.z, best.intervals, 'z', lambda x: f'{x:.4g}')} | {baseline} | {_percent(rec.saving('memory'))} "
            f"| {_percent(rec.saving('flops'))} |"
        )
    return "\n".join(lines)
