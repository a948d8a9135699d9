"""The `costlaw recommend` and `costlaw frontier` subcommands: cost-optimal heads and frontiers from fitted laws."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from costlaw.arch import PAPER_HEAD_DIM, PAPER_VOCAB_SIZE
from costlaw.cli import (
    UsageError, _contexts, _positive_int, _positive_number, add_objective_args, objective_from_args, positive_losses,
)
from costlaw.formatting import human_bytes, human_count, human_flops, render_rows
from costlaw.costs import DTYPE_ALIASES, DTYPE_BYTES, ObjectiveSpec
from costlaw.fit import fit_heads
from costlaw.frontier import COSTS, frontier, loss_cost_curves, optimal_heads_table, format_table
from costlaw.laws import Heads, LossLaw, laws_from_json
from costlaw.search import (
    RANK_BY, BudgetResult, Candidate, Costing, Recommendation, best_under_budget, objective_to_json,
    candidate_to_json, recommend, recommendation_to_json,
)


def load_laws(path: str) -> dict[Heads, LossLaw]:
    """Laws from `costlaw fit --json` output (its "laws" key) or from a bare list of law rows."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"cannot read --fits {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--fits {path} is not valid JSON ({error.msg} at line {error.lineno}); give the "
                         f"output of 'costlaw fit --json' or a list of law rows") from None
    rows = document.get("laws") if isinstance(document, dict) else document
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"--fits {path} holds no laws; expected {{\"laws\": [{{\"n_q\", \"n_kv\", \"a\", \"b\", "
                         f"\"E\"}}, ...]}} (costlaw fit --json) or a bare list of such rows")
    try:
        return laws_from_json(rows)
    except ValueError as error:
        raise UsageError(f"--fits {path}: {error}") from None


def _heads(text: str) -> Heads:
    try:
        n_q, n_kv = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a head configuration N_Q,N_KV (e.g. 32,8)") from None
    if n_q <= 0 or n_kv <= 0 or n_q % n_kv:
        raise argparse.ArgumentTypeError(f"{text!r} needs positive N_Q,N_KV with N_KV dividing N_Q (e.g. 32,8)")
    return n_q, n_kv


def _add_common(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--fits", metavar="FILE",
                        help="laws: the JSON of 'costlaw fit --json' or a list of {n_q, n_kv, a, b, E} rows")
    source.add_argument("--records", nargs="+", metavar="PATH",
                        help="run records (files or folders): fit them here, with bootstrap intervals")
    parser.add_argument("--bootstrap", type=_positive_int, default=200,
                        help="with --records: bootstrap resamples for the intervals (default 200)")
    parser.add_argument("--rank-by", choices=RANK_BY, default="z", help="what 'best' minimises (default z)")
    parser.add_argument("--baseline", type=_heads, metavar="N_Q,N_KV",
                        help="compare against these heads (default: Llama-3-like (d/d_h, 8), see --help of recommend)")
    build = parser.add_argument_group("shapes and dtypes")
    build.add_argument("--head-dim", type=_positive_int, default=PAPER_HEAD_DIM, help="head size d_h (default 64)")
    build.add_argument("--vocab", type=_positive_int, default=PAPER_VOCAB_SIZE, help="vocabulary (default 50304)")
    build.add_argument("--d-multiple", type=_positive_int, default=64, help="d is rounded to a multiple of this")
    dtypes = [*DTYPE_BYTES, *DTYPE_ALIASES]
    build.add_argument("--param-dtype", choices=dtypes, default="bfloat16", help="weights dtype")
    build.add_argument("--kv-dtype", choices=dtypes, default="bfloat16", help="KV cache dtype")
    add_objective_args(parser)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def register(commands: argparse._SubParsersAction) -> None:
    recommend_parser = commands.add_parser(
        "recommend", help="cost-optimal head configuration for a target loss and context",
        description="Rank head configurations by the inference cost of reaching --target-loss at --context "
                    "(the paper's step 3), or, with a budget, by the loss reachable within it. The default "
                    "baseline is Llama-3-like: the law with 8 KV heads whose n_q is nearest d/d_h of its own "
                    "shape (MHA-like n_q = n_kv if no 8-KV-head law reaches the target).",
    )
    recommend_parser.add_argument("--target-loss", type=_positive_number, help="target loss L*")
    recommend_parser.add_argument("--context", type=_positive_number, required=True,
                                  help="inference context T (a mean T gives the expected cost)")
    recommend_parser.add_argument("--flops-budget", type=_positive_number,
                                  help="instead of --target-loss: inference FLOPs per token allowed")
    recommend_parser.add_argument("--memory-budget", type=_positive_number,
                                  help="instead of --target-loss: bytes allowed (weights + one KV cache)")
    _add_common(recommend_parser)
    recommend_parser.set_defaults(handler=_recommend)
    frontier_parser = commands.add_parser(
        "frontier", help="loss-cost Pareto sets and the table of optimal heads",
        description="Pareto sets of predicted loss against inference FLOPs and memory across head "
                    "configurations, per context, and (with --target-losses) the optimal head "
                    "configuration for every (L*, T).",
    )
    frontier_parser.add_argument("--context", type=_contexts, required=True, help="context lengths, comma-separated")
    frontier_parser.add_argument("--target-losses", type=positive_losses, help="target losses for the optimal-heads table")
    frontier_parser.add_argument("--n-min", type=_positive_number, default=1e7, help="smallest N on the curves")
    frontier_parser.add_argument("--n-max", type=_positive_number, default=1e11, help="largest N on the curves")
    frontier_parser.add_argument("--points", type=_positive_int, default=25, help="sizes per curve (geometric)")
    _add_common(frontier_parser)
    frontier_parser.set_defaults(handler=_frontier)


def _costing(args: argparse.Namespace) -> Costing:
    return Costing(head_dim=args.head_dim, vocab_size=args.vocab, d_multiple=args.d_multiple,
                   param_dtype=args.param_dtype, kv_dtype=args.kv_dtype)


def _heads_text(heads: Heads) -> str:
    return f"({heads[0]},{heads[1]})"


def _shape_text(candidate: Candidate) -> str:
    return f"{candidate.shape.arch.num_layers} x {candidate.shape.arch.d_model}"


def summary(rec: Recommendation) -> str:
    """One sentence: the winner, the runner-up and the saving against the baseline."""
    best = rec.winner
    text = f"Best {_heads_text(best.heads)} at {_shape_text(best)}"
    if rec.runner_up is not None:
        text += f", runner-up {_heads_text(rec.runner_up.heads)} at {_shape_text(rec.runner_up)}"
    if rec.baseline is None:
        return f"{text}; no baseline: {rec.baseline_note}."
    return (f"{text}; against the baseline {_heads_text(rec.baseline.heads)} at {_shape_text(rec.baseline)} "
            f"({rec.baseline_note}) it needs {_change(rec.saving('memory'))} memory and "
            f"{_change(rec.saving('flops'))} FLOPs per token.")


def _change(saving: float) -> str:
    return f"{100 * saving:.1f}% less" if saving >= 0 else f"{-100 * saving:.1f}% more"


def _objective_text(objective: ObjectiveSpec) -> str:
    return (f"Z = {objective.lam:g}*M^{objective.alpha:.3g} + {1 - objective.lam:g}*C^{objective.beta:.3g}, "
            f"M in {objective.memory_unit}, C in {objective.flops_unit}")


def _ranking_rows(candidates: tuple[Candidate, ...]) -> list[list[str]]:
    rows = [["  H", "N*", "L x d", "N built", "loss", "FLOPs/token", "memory", "Z"]]
    for c in candidates:
        rows.append([f"  {_heads_text(c.heads)}", human_count(c.n_star), _shape_text(c),
                     human_count(c.shape.n_actual), f"{c.loss:.4f}", human_flops(c.flops),
                     human_bytes(c.memory_bytes), f"{c.z:.4g}"])
    return rows


def format_recommendation(rec: Recommendation) -> str:
    costing = rec.costing
    rows = [[f"L* = {rec.target_loss:g} at T = {rec.context:,}, ranked by {rec.rank_by} "
             f"({_objective_text(rec.objective)}; params {costing.param_dtype}, KV {costing.kv_dtype})"],
            *_ranking_rows(rec.ranked)]
    rows += [[f"skipped {_heads_text(s.heads)}: {s.reason}"] for s in rec.skipped]
    return render_rows(rows) + "\n" + summary(rec)


def budget_to_json(result: BudgetResult, objective: ObjectiveSpec) -> dict:
    return {
        "context": result.context, "flops_budget": result.flops_budget, "memory_budget": result.memory_budget,
        "objective": objective_to_json(objective),
        "ranked": [candidate_to_json(c, objective) for c in result.ranked],
        "skipped": [{"n_q": s.heads[0], "n_kv": s.heads[1], "reason": s.reason} for s in result.skipped],
    }


def format_budget(result: BudgetResult) -> str:
    limits = " and ".join(text for text in (
        result.flops_budget and f"{human_flops(result.flops_budget)} per token",
        result.memory_budget and human_bytes(result.memory_budget)) if text)
    rows = [[f"largest model within {limits} at T = {result.context:,}, ranked by predicted loss"]]
    if result.ranked:
        rows += _ranking_rows(result.ranked)
    rows += [[f"skipped {_heads_text(s.heads)}: {s.reason}"] for s in result.skipped]
    text = render_rows(rows)
    if result.ranked:
        best = result.ranked[0]
        text += f"\nLowest loss {best.loss:.4f} with {_heads_text(best.heads)} at {_shape_text(best)}."
    return text


def _laws_and_samples(args: argparse.Namespace) -> tuple[dict[Heads, LossLaw], dict[Heads, tuple[LossLaw, ...]] | None]:
    """Laws from --fits, or fitted from --records (then with their bootstrap refits for intervals)."""
    if args.fits is not None:
        return load_laws(args.fits), None
    from costlaw.cli_fit import _load  # the fitting side, needed only for --records

    try:
        result = fit_heads(_load(args.records).records, bootstrap=args.bootstrap)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not result.laws:
        raise UsageError("no record names its head configuration (n_q, n_kv); recommend compares configurations")
    return result.laws, {h: f.samples for h, f in result.fits.items() if h is not None}


def _recommend(args: argparse.Namespace) -> str:
    laws, samples = _laws_and_samples(args)
    budget = args.flops_budget is not None or args.memory_budget is not None
    if budget == (args.target_loss is not None):
        raise UsageError("give --target-loss, or a budget (--flops-budget and/or --memory-budget), not both")
    objective, costing = objective_from_args(args), _costing(args)
    if budget:
        result = best_under_budget(laws, args.context, flops_budget=args.flops_budget,
                                   memory_budget=args.memory_budget, objective=objective, costing=costing)
        return json.dumps(budget_to_json(result, objective), indent=2) if args.json else format_budget(result)
    rec = recommend(laws, args.target_loss, args.context, objective=objective, rank_by=args.rank_by,
                    baseline=args.baseline, costing=costing, samples=samples)
    return json.dumps(recommendation_to_json(rec), indent=2) if args.json else format_recommendation(rec)


def _frontier(args: argparse.Namespace) -> str:
    laws, _ = _laws_and_samples(args)
    if args.n_min >= args.n_max:
        raise UsageError(f"--n-min {args.n_min:g} must be below --n-max {args.n_max:g}")
    objective, costing = objective_from_args(args), _costing(args)
    grid = np.geomspace(args.n_min, args.n_max, args.points)
    fronts = {}
    for context in args.context:
        curves = loss_cost_curves(laws, context, grid, costing=costing)
        fronts[context] = {cost: frontier(curves, cost) for cost in COSTS}
    table = [] if args.target_losses is None else optimal_heads_table(
        laws, args.target_losses, args.context, objective=objective, rank_by=args.rank_by,
        baseline=args.baseline, costing=costing)
    if args.json:
        return json.dumps({
            "frontiers": [
                {"context": context, **{cost: [{"n_q": p.heads[0], "n_kv": p.heads[1], "n": p.n, "loss": p.loss,
                                                 "cost": p.cost} for p in points] for cost, points in sets.items()}}
                for context, sets in fronts.items()
            ],
            "table": [{"target_loss": row.target_loss, "context": row.context,
                       "recommendation": None if row.recommendation is None
                       else recommendation_to_json(row.recommendation)} for row in table],
        }, indent=2)
    blocks = []
    for context, sets in fronts.items():
        for cost, points in sets.items():
            unit = "FLOPs/token" if cost == "flops" else "memory"
            rows = [[f"Pareto set at T = {context:,}: loss vs {unit}"], ["  H", "N", "loss", unit]]
            rows += [[f"  {_heads_text(p.heads)}", human_count(p.n), f"{p.loss:.4f}",
                      human_flops(p.cost) if cost == "flops" else human_bytes(p.cost)] for p in points]
            blocks.append(render_rows(rows))
    if table:
        blocks.append(f"optimal heads, ranked by {args.rank_by} ({_objective_text(objective)})\n"
                      + format_table(table))
    return "\n\n".join(blocks)
