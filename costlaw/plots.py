"""Matplotlib figures for the report: loss vs N per head configuration, loss-cost frontiers, savings."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from costlaw.laws import Heads, LossLaw  # noqa: E402


def _label(heads: Heads) -> str:
    return f"n_q={heads[0]}, n_kv={heads[1]}"


def _colors(keys: Sequence[Heads]) -> dict[Heads, tuple]:
    cmap = plt.get_cmap("viridis")
    return {h: cmap(i / max(len(keys) - 1, 1)) for i, h in enumerate(keys)}


def loss_vs_params(
    points: Mapping[Heads, tuple[Sequence[float], Sequence[float]]],
    laws: Mapping[Heads, LossLaw],
    samples: Mapping[Heads, Sequence[LossLaw]],
    path: Path,
    *,
    confidence: float = 0.95,
) -> Path:
    """Observed final losses and fitted L(N) = (a/N)^b + E per head configuration, with the
    bootstrap band of the fit; log-scaled N because ladders span decades."""
    keys = sorted(set(points) | set(laws))
    colors = _colors(keys)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    all_n = np.concatenate([np.asarray(points[h][0], float) for h in points]) if points else np.array([1e6, 1e9])
    grid = np.geomspace(all_n.min() / 1.5, all_n.max() * 1.5, 200)
    tail = (1 - confidence) / 2 * 100
    for h in keys:
        if h in points:
            ax.scatter(points[h][0], points[h][1], color=colors[h], s=18, zorder=3)
        if h in laws:
            ax.plot(grid, [laws[h].loss(n) for n in grid], color=colors[h], lw=1.5, label=_label(h))
        if samples.get(h):
            curves = np.array([[s.loss(n) for n in grid] for s in samples[h]])
            lo, hi = np.percentile(curves, [tail, 100 - tail], axis=0)
            ax.fill_between(grid, lo, hi, color=colors[h], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final held-out loss (nats/token)")
    ax.set_title(f"Loss vs model size per head configuration (bands: {confidence:.0%} bootstrap)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def frontier(
    curves: Mapping[Heads, tuple[Sequence[float], Sequence[float]]],
    pareto: Sequence[tuple[float, float]],
    path: Path,
    *,
    cost_label: str,
    title: str,
) -> Path:
    """Loss against a cost for every head configuration and the Pareto set across them.

    Rounded shapes are not monotone in cost along N (layers and width round separately), so each
    configuration is drawn as its own lower envelope: the best loss it reaches at each cost.
    """
    keys = sorted(curves)
    colors = _colors(keys)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for h in keys:
        cost, loss = _lower_envelope(*curves[h])
        ax.plot(cost, loss, color=colors[h], lw=1.2, label=_label(h))
    if pareto:
        px, py = zip(*sorted(pareto))
        ax.plot(px, py, color="black", lw=2.5, ls="--", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("predicted loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _lower_envelope(cost: Sequence[float], loss: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(cost, kind="stable")
    cost, loss = np.asarray(cost, float)[order], np.asarray(loss, float)[order]
    keep = loss < np.minimum.accumulate(np.concatenate([[np.inf], loss[:-1]]))
    return cost[keep], loss[keep]


def savings_bars(labels: Sequence[str], memory_saving: Sequence[float], flops_saving: Sequence[float], path: Path, *, title: str) -> Path:
    """Percent saved in memory and in FLOPs against the baseline, one pair of bars per case."""
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4.5))
    ax.bar(x - 0.2, memory_saving, 0.4, label="memory")
    ax.bar(x + 0.2, flops_saving, 0.4, label="FLOPs")
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("saving vs baseline (%)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
