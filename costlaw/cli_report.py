"""The `costlaw report` subcommand: a folder of run records -> one HTML page and Markdown with PNG plots."""

from __future__ import annotations

import argparse
import json

from costlaw.cli import UsageError, _contexts, positive_losses
from costlaw.cli_fit import _load, _non_negative_int
from costlaw.costs import ObjectiveSpec
from costlaw.report import ReportOptions, build_report


def register(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="HTML + Markdown report with plots from run records",
        description="Fit every head configuration, cost the fitted laws at several contexts, and write "
                    "report.html (self-contained), report.md, report.json and PNG plots: loss vs N with "
                    "bootstrap bands, loss-cost frontiers, the optimal-H table, savings against the baseline.",
    )
    report.add_argument("--records", nargs="+", required=True, metavar="PATH", help="run records or folders of them")
    report.add_argument("--out", required=True, metavar="DIR", help="folder to write the report into (created)")
    report.add_argument("--contexts", type=_contexts, default=[8192, 32768, 131072],
                        help="inference context lengths to cost at (default 8192,32768,131072)")
    report.add_argument("--target-losses", type=positive_losses, help="target losses L* (default: three spread over the data)")
    report.add_argument("--bootstrap", type=_non_negative_int, default=200, help="bootstrap resamples (default 200)")
    report.add_argument("--shared-e", action="store_true", help="one irreducible loss E for all head configurations")
    report.add_argument("--seed", type=_non_negative_int, default=0, help="bootstrap seed")
    report.add_argument("--lam", type=float, default=0.9, help="memory weight of Z in [0, 1]")
    report.add_argument("--alpha", type=float, default=0.5, help="memory exponent of Z")
    report.add_argument("--beta", type=float, default=1 / 3, help="FLOPs exponent of Z")
    report.add_argument("--json", action="store_true", help="print the written paths as JSON")
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> str:
    loaded = _load(args.records)
    options = ReportOptions(
        contexts=tuple(args.contexts),
        target_losses=None if args.target_losses is None else tuple(args.target_losses),
        bootstrap=args.bootstrap,
        shared_E=args.shared_e, seed=args.seed, objective=ObjectiveSpec(lam=args.lam, alpha=args.alpha, beta=args.beta),
    )
    try:
        files = build_report(loaded, args.out, options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    paths = {"html": str(files.html), "markdown": str(files.markdown), "json": str(files.json),
             "figures": [str(p) for p in files.figures]}
    if args.json:
        return json.dumps(paths, indent=2)
    return f"wrote {files.html}, {files.markdown}, {files.json} and {len(files.figures)} figures"
