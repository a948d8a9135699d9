"""The study's report from a folder of run records: fits, frontiers, optimal heads, savings (HTML + Markdown + PNG)."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from costlaw import plots
from costlaw.costs import ObjectiveSpec
from costlaw.fit import FitResult, JointFit, fit_heads, fit_joint, points_by_heads
from costlaw.formatting import human_bytes, human_count, human_flops
from costlaw.frontier import format_table, frontier, loss_cost_curves, optimal_heads_table
from costlaw.laws import Heads
from costlaw.records import LoadResult, Record, load_records
from costlaw.search import Costing, Recommendation, recommend, recommendation_to_json


@dataclass(frozen=True)
class ReportOptions:
    """What to compute: contexts T to cost at, target losses L* (None: spread over the observed
    losses), bootstrap resamples for every interval, and the objective Z."""

    contexts: tuple[float, ...] = (8192, 32768, 131072)
    target_losses: tuple[float, ...] | None = None
    bootstrap: int = 200
    shared_E: bool = False
    confidence: float = 0.95
    seed: int = 0
    objective: ObjectiveSpec = ObjectiveSpec()
    costing: Costing = Costing()


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    json: Path
    figures: tuple[Path, ...]


def default_targets(fit: FitResult, records: Sequence[Record]) -> tuple[float, ...]:
    """Three target losses inside the observed range and above every fitted E, so each is reachable
    by at least one configuration and sits where the fits have data."""
    losses = np.array([r.loss for r in records if r.heads is not None])
    floor = max(law.E for law in fit.laws.values())
    lo, hi = np.percentile(losses, [10, 60])
    lo = max(lo, floor + 0.05 * (hi - floor))
    return tuple(float(f"{x:.3g}") for x in np.linspace(lo, hi, 3))


def context_gaps(records: Sequence[Record]) -> dict[Heads, dict[int, float]]:
    """Mean relative loss gap of each head configuration to the MHA run of the same (L, d), per
    evaluation context: the paper reuses a fit made at one context for every T because these gaps
    stay flat beyond ~8K, and this table lets a user check that on their own runs."""
    by_shape: dict[tuple[int, int], dict[Heads, Record]] = {}
    for r in records:
        if r.architecture is not None and r.heads is not None:
            by_shape.setdefault((r.architecture.num_layers, r.architecture.d_model), {})[r.heads] = r
    gaps: dict[Heads, dict[int, list[float]]] = {}
    for runs in by_shape.values():
        mha = [r for h, r in runs.items() if h[0] == h[1]]
        if not mha:
            continue
        ref = max(mha, key=lambda r: r.heads[0])
        for heads, r in runs.items():
            for context, loss in r.losses_by_context.items():
                if context in ref.losses_by_context:
                    gaps.setdefault(heads, {}).setdefault(context, []).append(loss / ref.losses_by_context[context] - 1)
    return {h: {c: float(np.mean(v)) for c, v in sorted(per.items())} for h, per in sorted(gaps.items())}


def _interval(value: float, bounds: tuple[float, float] | None, fmt=lambda x: f"{x:.4g}") -> str:
    if bounds is None or not all(map(math.isfinite, bounds)):
        return fmt(value)
    return f"{fmt(value)} [{fmt(bounds[0])}, {fmt(bounds[1])}]"


def _fit_table(fit: FitResult) -> str:
    lines = [
        "| H (n_q, n_kv) | points | a | b | E | R^2 | held-out error |",
        "|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    for heads, f in fit.fits.items():
        held = "n/a (< 4 sizes)" if f.held_out is None else f"{100 * f.held_out.relative_error:+.2f}% at N={human_count(f.held_out.n)}"
        iv = f.intervals or {}
        lines.append(
            f"| {heads} | {f.n_points} | {_interval(f.law.a, iv.get('a'), lambda x: f'{x:.3e}')} "
            f"| {_interval(f.law.b, iv.get('b'))} | {_interval(f.law.E, iv.get('E'))} | {f.r2:.5f} | {held} |"
        )
    return "\n".join(lines)


def _joint_text(joint: JointFit | str) -> str:
    if isinstance(joint, str):
        return f"Joint model not fitted: {joint}"
    worst = max(joint.held_out.values(), default=float("nan"))
    mean = float(np.mean(list(joint.held_out.values()))) if joint.held_out else float("nan")
    return (
        f"Joint model over H (E shared = {joint.E:.4g}; log-reducible loss and log b linear in log2 n_q, log2 n_kv"
        f"{' and their product' if joint.interaction else ''}): R^2 {joint.r2:.5f} on {joint.n_points} points. "
        f"Leave-one-configuration-out error: mean {100 * mean:.2f}%, worst {100 * worst:.2f}% "
        f"over {len(joint.held_out)} configurations."
    )


def _recommendation_table(rec: Recommendation, top: int = 6) -> str:
    lines = [
        "| rank | H | N* | shape L x d | loss at built N | FLOPs/token | memory | Z |",
        "|---:|:---:|---:|:---:|---:|---:|---:|---:|",
    ]
    shown = list(rec.ranked[:top]) + ([rec.baseline] if rec.baseline is not None and rec.baseline not in rec.ranked[:top] else [])
    for c in shown:
        iv = c.intervals or {}
        rank = rec.ranked.index(c) + 1
        lines.append(
            f"| {rank} | {c.heads} | {_interval(c.n_star, iv.get('n_star'), human_count)} "
            f"| {c.shape.arch.num_layers} x {c.shape.arch.d_model} | {c.loss:.4f} "
            f"| {_interval(c.flops, iv.get('flops'), human_flops)} | {_interval(c.memory_bytes, iv.get('memory_bytes'), human_bytes)} "
            f"| {_interval(c.z, iv.get('z'))} |"
        )
    return "\n".join(lines)


def _gaps_table(gaps: dict[Heads, dict[int, float]]) -> str:
    contexts = sorted({c for per in gaps.values() for c in per})
    if len(contexts) < 2:
        return (
            "The records hold one evaluation context, so the assumption that relative loss gaps stay "
            "flat across contexts cannot be checked here; evaluate runs at several contexts to check it."
        )
    lines = ["| H | " + " | ".join(f"T={c:,}" for c in contexts) + " |", "|:---:|" + "---:|" * len(contexts)]
    for heads, per in gaps.items():
        lines.append(f"| {heads} | " + " | ".join(f"{100 * per[c]:+.2f}%" if c in per else "" for c in contexts) + " |")
    return "\n".join(lines)


def _n_grid(records: Sequence[Record]) -> np.ndarray:
    ns = np.array([r.non_embedding for r in records if r.heads is not None], float)
    return np.geomspace(ns.min() / 2, ns.max() * 50, 40)


def build_report(loaded: LoadResult | Sequence[str | Path], out_dir: str | Path, options: ReportOptions = ReportOptions()) -> ReportFiles:
    """Fit, search and plot loaded records (or the records under some paths); write report.md,
    report.html (figures embedded), report.json and the PNG figures into out_dir."""
    if not isinstance(loaded, LoadResult):
        loaded = load_records(loaded)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in loaded.records if r.heads is not None]
    if not records:
        raise ValueError("no record names its head configuration (n_q, n_kv); the report compares configurations")
    fit = fit_heads(records, shared_E=options.shared_E, bootstrap=options.bootstrap, seed=options.seed, confidence=options.confidence)
    try:
        joint: JointFit | str = fit_joint(records)
    except ValueError as e:
        joint = str(e)
    laws = fit.laws
    samples = {h: f.samples for h, f in fit.fits.items() if h is not None}
    targets = options.target_losses or default_targets(fit, records)
    long_context = max(options.contexts)
    kw = dict(objective=options.objective, costing=options.costing)

    figures = [plots.loss_vs_params(
        {h: p for h, p in points_by_heads(records).items() if h is not None}, laws, samples,
        out / "loss_vs_params.png", confidence=options.confidence,
    )]
    for context in options.contexts:
        curves = loss_cost_curves(laws, context, _n_grid(records), costing=options.costing)
        for cost, label, attr in (("flops", "inference FLOPs per token", "flops"), ("memory", "inference memory (bytes, weights + KV cache)", "memory_bytes")):
            front = frontier(curves, cost)
            figures.append(plots.frontier(
                {h: (getattr(c, attr), c.loss) for h, c in curves.items()},
                [(p.cost, p.loss) for p in front],
                out / f"frontier_{cost}_T{int(context)}.png",
                cost_label=label, title=f"Loss vs {cost} at T = {int(context):,} tokens",
            ))
    table = optimal_heads_table(laws, targets, options.contexts, samples=samples, confidence=options.confidence, **kw)
    recs = [recommend(laws, t, long_context, samples=samples, confidence=options.confidence, **kw) for t in targets if any(t > law.E for law in laws.values())]
    with_baseline = [r for r in recs if r.baseline is not None]
    if with_baseline:
        figures.append(plots.savings_bars(
            [f"L*={r.target_loss:g}: {r.winner.heads} vs {r.baseline.heads}" for r in with_baseline],
            [100 * r.saving("memory") for r in with_baseline], [100 * r.saving("flops") for r in with_baseline],
            out / f"savings_T{int(long_context)}.png", title=f"Best configuration vs baseline at T = {int(long_context):,}",
        ))
    gaps = context_gaps(records)

    sections = [
        "# Cost-optimal GQA report",
        f"{len(records)} run records, {len(fit.fits)} head configurations; intervals are {options.confidence:.0%} "
        f"bootstrap percentiles ({options.bootstrap} resamples). Objective Z = {options.objective.lam:g} M^{options.objective.alpha:.3g} "
        f"+ {1 - options.objective.lam:g} C^{options.objective.beta:.3g} (M in {options.objective.memory_unit}, C in {options.objective.flops_unit}).",
        *([f"Skipped inputs ({len(loaded.warnings)}):\n\n" + "\n".join(f"- {w}" for w in loaded.warnings)] if loaded.warnings else []),
        "## Fitted laws L(N; H) = (a/N)^b + E",
        _fit_table(fit),
        _joint_text(joint),
        "![loss vs N](loss_vs_params.png)",
        "## Optimal head configuration per target loss and context",
        format_table(table),
        f"## Ranking at T = {int(long_context):,}",
        *[f"### L* = {r.target_loss:g}\n\nBaseline: {r.baseline_note}\n\n{_recommendation_table(r)}" for r in recs],
        *([f"![savings](savings_T{int(long_context)}.png)"] if with_baseline else []),
        "## Loss-cost frontiers",
        *[f"![{p.stem}]({p.name})" for p in figures if p.stem.startswith("frontier_")],
        "## Are relative loss gaps flat across contexts?",
        "Mean relative loss of each configuration against the MHA run of the same (L, d):",
        _gaps_table(gaps),
    ]
    markdown = "\n\n".join(sections) + "\n"
    md_path = out / "report.md"
    md_path.write_text(markdown)
    html_path = out / "report.html"
    html_path.write_text(_html(markdown, out))
    json_path = out / "report.json"
    json_path.write_text(json.dumps({
        "records": len(records),
        "warnings": loaded.warnings,
        "fits": {str(h): {"a": f.law.a, "b": f.law.b, "E": f.law.E, "intervals": f.intervals, "r2": f.r2,
                          "held_out_relative_error": None if f.held_out is None else f.held_out.relative_error}
                 for h, f in fit.fits.items()},
        "joint": joint if isinstance(joint, str) else {"E": joint.E, "r2": joint.r2, "held_out": {str(h): e for h, e in joint.held_out.items()}},
        "recommendations": [recommendation_to_json(r) for r in recs],
        "context_gaps": {str(h): per for h, per in gaps.items()},
    }, indent=2, default=_json_default))
    return ReportFiles(md_path, html_path, json_path, tuple(figures))


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")


def _html(markdown: str, folder: Path) -> str:
    """A self-contained page: the Markdown's headings, paragraphs, lists, tables and images
    (embedded as data URIs so the one file can be mailed or archived)."""
    body = []
    for block in markdown.strip().split("\n\n"):
        lines = block.splitlines()
        if block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            body.append(f"<h{level}>{html.escape(block.lstrip('#').strip())}</h{level}>")
        elif block.startswith("!["):
            name = re.search(r"\(([^)]+)\)", block).group(1)
            data = base64.b64encode((folder / name).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>')
        elif lines[0].startswith("|"):
            rows = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines if not re.match(r"^\|[-:| ]+\|$", line)]
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rest) + "</table>")
        elif lines[0].startswith("- ") or (len(lines) > 1 and lines[1].startswith("- ")):
            items = [html.escape(line[2:]) for line in lines if line.startswith("- ")]
            intro = "" if lines[0].startswith("- ") else f"<p>{html.escape(lines[0])}</p>"
            body.append(intro + "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
        else:
            body.append(f"<p>{html.escape(block)}</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
             "img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Cost-optimal GQA report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
