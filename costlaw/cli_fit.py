"""The `costlaw fit` and `costlaw fit-chinchilla` subcommands: scaling-law fits from run records and loss tables."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from costlaw.chinchilla import CHINCHILLA_PARAMS, ChinchillaFit, chinchilla_points, fit_chinchilla
from costlaw.cli import UsageError, _number
from costlaw.formatting import human_count, render_rows
from costlaw.fit import LAW_PARAMS, FitResult, HeadFit, JointFit, fit_heads, fit_joint
from costlaw.laws import laws_to_json
from costlaw.records import LoadResult, RecordWarning, load_records

DEFAULT_BUDGETS = "1e21,1e22,1e23,5.76e23,1e24,1e25"  # 5.76e23 FLOPs: Chinchilla's own budget


def register(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser(
        "fit", help="fit L(N) = (a/N)^b + E per head configuration",
        description="Fit L(N; H) = (a_H/N)^b_H + E_H to run records (Huber loss on log-loss, L-BFGS), with "
                    "bootstrap intervals, a held-out check on each H's largest size, and a joint model over "
                    "(n_q, n_kv) that predicts untrained head configurations.",
    )
    fit.add_argument("--records", nargs="+", required=True, metavar="PATH",
                     help="run-record JSON files, CSV/JSONL loss tables, or folders holding them (searched recursively)")
    fit.add_argument("--shared-e", action="store_true", help="fit one irreducible loss E shared by all head configurations")
    fit.add_argument("--bootstrap", type=_non_negative_int, default=200, help="bootstrap resamples (default 200; 0 skips)")
    fit.add_argument("--seed", type=_non_negative_int, default=0, help="bootstrap seed (default 0)")
    fit.add_argument("--no-interaction", action="store_true",
                     help="joint model without the log2 n_q * log2 n_kv term (for few head configurations)")
    fit.add_argument("--json", action="store_true", help="print JSON; its 'laws' key feeds `costlaw recommend`")
    fit.set_defaults(handler=_fit)

    chinchilla = commands.add_parser(
        "fit-chinchilla", help="fit L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3)",
        description="Fit the Chinchilla law to a table of runs (columns N or 'Model Size', D or 'Training FLOP', "
                    "loss) as Besiroglu et al. (2024) refit Hoffmann et al. (2022), and give the compute-optimal "
                    "N and D at several budgets.",
    )
    chinchilla.add_argument("--csv", required=True, metavar="FILE", help="CSV or JSONL table of runs")
    chinchilla.add_argument("--drop-highest", type=_non_negative_int, default=5,
                            help="drop this many highest-loss runs as outliers (default 5, as the replication)")
    chinchilla.add_argument("--bootstrap", type=_non_negative_int, default=100,
                            help="bootstrap resamples (default 100; 0 skips)")
    chinchilla.add_argument("--seed", type=_non_negative_int, default=0, help="bootstrap seed (default 0)")
    chinchilla.add_argument("--budgets", type=_budgets, default=_budgets(DEFAULT_BUDGETS), metavar="FLOPS",
                            help=f"training compute budgets, comma-separated (default {DEFAULT_BUDGETS})")
    chinchilla.add_argument("--json", action="store_true", help="print JSON")
    chinchilla.set_defaults(handler=_fit_chinchilla)


def _non_negative_int(text: str) -> int:
    try:
        value = _number(text)
    except ValueError:
        value = -1
    if not isinstance(value, int) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _budgets(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive FLOP budgets (e.g. 1e21,1e23)")
    return values


def _load(paths: list[str]) -> LoadResult:
    """Load records, printing each skipped file and duplicate as one stderr line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)  # printed below, once, in the CLI's own format
        try:
            loaded = load_records(paths)
        except ValueError as error:
            raise UsageError(str(error)) from None
    for message in loaded.warnings:
        print(f"costlaw: warning: {message}", file=sys.stderr)
    for kept, dropped in loaded.duplicates:
        print(f"costlaw: warning: duplicate run {dropped} (same run as {kept}); kept the first", file=sys.stderr)
    if not loaded.records:
        raise UsageError(f"every record in {', '.join(paths)} was skipped (see the warnings above)")
    return loaded


def _fit(args: argparse.Namespace) -> str:
    loaded = _load(args.records)
    try:
        result = fit_heads(loaded.records, shared_E=args.shared_e, bootstrap=args.bootstrap, seed=args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        joint, joint_error = fit_joint(loaded.records, interaction=not args.no_interaction), None
    except ValueError as error:
        joint, joint_error = None, str(error)
    if args.json:
        return json.dumps(_fit_json(loaded, result, joint, joint_error, args), indent=2)
    return _fit_text(loaded, result, joint, joint_error, args)


def _interval_text(value: float, interval: tuple[float, float] | None) -> str:
    return f"{value:.4g}" if interval is None else f"{value:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]"


def _heads_text(heads: tuple[int, int] | None) -> str:
    return "  -" if heads is None else f"  ({heads[0]}, {heads[1]})"


def _fit_text(loaded: LoadResult, result: FitResult, joint: JointFit | None, joint_error: str | None,
              args: argparse.Namespace) -> str:
    ci = f"{result.confidence:.0%} bootstrap intervals, {args.bootstrap} resamples" if args.bootstrap else "no bootstrap"
    rows = [
        [f"{len(loaded.records)} runs, {len(result.fits)} head configurations; {len(loaded.warnings)} skipped, "
         f"{len(loaded.duplicates)} duplicates"],
        [f"L(N) = (a/N)^b + E{' (E shared)' if result.shared_E else ''}, N = non-embedding parameters ({ci})"],
        ["  (n_q, n_kv)", "runs", "a", "b", "E", "R^2", "held-out"],
    ]
    for heads, fit in result.fits.items():
        rows.append([_heads_text(heads), str(fit.n_points),
                     *[_interval_text(getattr(fit.law, p), fit.intervals.get(p)) for p in LAW_PARAMS],
                     f"{fit.r2:.5f}", _held_out_text(fit)])
    if any(h is None for h in result.fits):
        rows.append(["  (- : table rows without n_q/n_kv columns, fitted as one group)"])
    joint_text = f"joint model over heads: not fitted ({joint_error})" if joint is None else render_rows(_joint_rows(joint))
    return render_rows(rows) + "\n" + joint_text


def _held_out_text(fit: HeadFit) -> str:
    h = fit.held_out
    return "n/a" if h is None else f"{h.relative_error:+.2%} at {human_count(h.n)}"


def _joint_rows(joint: JointFit) -> list[list[str]]:
    names = ["1", "log2 n_q", "log2 n_kv", "log2 n_q*log2 n_kv"][: len(joint.c_coef)]
    errors = list(joint.held_out.values())
    held = (f"mean {sum(errors) / len(errors):.2%}, worst {max(errors):.2%} at {max(joint.held_out, key=joint.held_out.get)}"
            if errors else "n/a (too few head configurations)")
    return [
        [f"joint model over heads: E = {joint.E:.4g} shared; c = log((a/N_ref)^b) and log b linear in "
         f"{', '.join(names[1:])}; N_ref = {human_count(joint.n_ref)}; R^2 = {joint.r2:.5f} on {joint.n_points} runs"],
        ["  coefficient", *names],
        ["  c", *[f"{v:+.4g}" for v in joint.c_coef]],
        ["  log b", *[f"{v:+.4g}" for v in joint.log_b_coef]],
        [f"  leave-one-head-configuration-out mean relative loss error: {held}"],
    ]


def _fit_json(loaded: LoadResult, result: FitResult, joint: JointFit | None, joint_error: str | None,
              args: argparse.Namespace) -> dict:
    fits = []
    for heads, fit in result.fits.items():
        h = fit.held_out
        fits.append({
            "n_q": None if heads is None else heads[0], "n_kv": None if heads is None else heads[1],
            "a": fit.law.a, "b": fit.law.b, "E": fit.law.E,
            "intervals": {p: list(v) for p, v in fit.intervals.items()},
            "r2": _finite(fit.r2), "n_points": fit.n_points,
            "held_out": None if h is None else {"n": h.n, "observed": h.observed, "predicted": h.predicted,
                                                "relative_error": h.relative_error},
        })
    return {
        "laws": laws_to_json(result.laws),
        "shared_E": result.shared_E,
        "confidence": result.confidence,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "fits": fits,
        "joint": None if joint is None else {
            "E": joint.E, "n_ref": joint.n_ref, "c_coef": list(joint.c_coef), "log_b_coef": list(joint.log_b_coef),
            "interaction": joint.interaction, "r2": joint.r2, "n_points": joint.n_points,
            "held_out": [{"n_q": h[0], "n_kv": h[1], "mean_relative_error": e} for h, e in joint.held_out.items()],
        },
        "joint_error": joint_error,
        "n_records": len(loaded.records),
        "warnings": loaded.warnings,
        "duplicates": [{"kept": kept, "dropped": dropped} for kept, dropped in loaded.duplicates],
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _fit_chinchilla(args: argparse.Namespace) -> str:
    loaded = _load([args.csv])
    try:
        n, d, loss = chinchilla_points(loaded.records, drop_highest=args.drop_highest)
        fit = fit_chinchilla(n, d, loss, bootstrap=args.bootstrap, seed=args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from None
    optimal = [(c, *fit.law.compute_optimal(c)) for c in args.budgets]
    if args.json:
        return json.dumps({
            "law": {p: getattr(fit.law, p) for p in CHINCHILLA_PARAMS},
            "intervals": {p: list(v) for p, v in fit.intervals.items()},
            "confidence": fit.confidence, "bootstrap": args.bootstrap, "seed": args.seed,
            "r2": _finite(fit.r2), "n_points": fit.n_points, "dropped_highest": args.drop_highest,
            "compute_optimal": [{"flops": c, "n": opt_n, "d": opt_d, "tokens_per_param": opt_d / opt_n,
                                 "loss": fit.law.loss(opt_n, opt_d)} for c, opt_n, opt_d in optimal],
            "warnings": loaded.warnings,
        }, indent=2)
    return _chinchilla_text(fit, optimal, args)


def _chinchilla_text(fit: ChinchillaFit, optimal: list[tuple[float, float, float]], args: argparse.Namespace) -> str:
    ci = f"{fit.confidence:.0%} bootstrap intervals, {args.bootstrap} resamples" if args.bootstrap else "no bootstrap"
    rows = [
        [f"L(N, D) = E + A/N^alpha + B/D^beta on {fit.n_points} runs ({args.drop_highest} highest-loss dropped; {ci})"],
        *[[f"  {p}", _interval_text(getattr(fit.law, p), fit.intervals.get(p))] for p in CHINCHILLA_PARAMS],
        ["  R^2 (loss)", f"{fit.r2:.5f}"],
        ["compute-optimal allocation (C = 6 N D)"],
        ["  budget", "N", "D", "D/N", "loss"],
        *[[f"  {c:.3g} FLOP", human_count(opt_n), human_count(opt_d), f"{opt_d / opt_n:.1f}",
           f"{fit.law.loss(opt_n, opt_d):.4f}"] for c, opt_n, opt_d in optimal],
    ]
    return render_rows(rows)
