"""The `costlaw` command line: one subcommand per analysis step, each with --help and --json."""

import argparse
import importlib
import json
import re
import sys
from typing import Sequence

from costlaw.arch import PAPER_HEAD_DIM, PAPER_VOCAB_SIZE, Architecture, ladder_shape, mha_num_heads
from costlaw.formatting import human_bytes, human_count, human_flops, render_rows
from costlaw.costs import DTYPE_ALIASES, DTYPE_BYTES, FLOPS_UNITS, MEMORY_UNITS, ObjectiveSpec, cost_report

# Library errors name dataclass fields; a command-line user needs the option to change.
_FIELD_FLAGS = {
    "num_layers": "--layers", "d_model": "--d-model", "num_q_heads": "--q-heads",
    "num_kv_heads": "--kv-heads", "head_dim": "--head-dim", "vocab_size": "--vocab",
    "d_ff": "--d-ff", "ffn_matrices": "--ffn-matrices", "lam": "--lam", "alpha": "--alpha",
    "beta": "--beta",
}
_FIELD_PATTERN = re.compile(r"\b(" + "|".join(_FIELD_FLAGS) + r")\b")


# Subcommands defined in their own modules: each has register(commands), which adds its parser(s)
# with set_defaults(handler=fn); fn(args) returns the text to print and raises UsageError or
# ValueError for user mistakes.
COMMAND_MODULES: tuple[str, ...] = ("costlaw.cli_fit", "costlaw.cli_search", "costlaw.cli_report")


class UsageError(Exception):
    """A mistake in the command line, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _positive_int(text: str) -> int:
    try:
        value = _number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if not isinstance(value, int) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _positive_number(text: str) -> int | float:
    try:
        value = _number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _contexts(text: str) -> list[int | float]:
    try:
        return [_positive_number(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive context lengths (e.g. 8192,32768,131072)"
        ) from None


def positive_losses(text: str) -> list[int | float]:
    """A comma-separated list of target losses, for --target-loss(es) options."""
    try:
        return [_positive_number(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive losses "
                                         f"(e.g. 2.8,3.0,3.2)") from None


def add_objective_args(parser: argparse.ArgumentParser) -> None:
    """The options of the combined objective Z, shared by every command that ranks or costs."""
    dtypes = [*DTYPE_BYTES, *DTYPE_ALIASES]
    objective = parser.add_argument_group("objective Z = lam*M^alpha + (1-lam)*C^beta")
    objective.add_argument("--lam", type=float, default=0.9, help="memory weight in [0, 1]")
    objective.add_argument("--alpha", type=float, default=0.5, help="memory exponent")
    objective.add_argument("--beta", type=float, default=1 / 3, help="FLOPs exponent")
    objective.add_argument("--memory-unit", choices=list(MEMORY_UNITS), default="GB")
    objective.add_argument("--flops-unit", choices=list(FLOPS_UNITS), default="GFLOP")
    objective.add_argument("--memory-dtype", choices=dtypes,
                           help="bytes per value for Z (default: the param and KV dtypes)")


def objective_from_args(args: argparse.Namespace) -> ObjectiveSpec:
    return ObjectiveSpec(lam=args.lam, alpha=args.alpha, beta=args.beta, memory_unit=args.memory_unit,
                         flops_unit=args.flops_unit, memory_dtype=args.memory_dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="costlaw", description="Cost-aware scaling analysis of attention configurations.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cost = commands.add_parser(
        "cost", help="FLOPs, memory and Z of one architecture",
        description="Analytic per-token inference and training costs of one architecture.",
    )
    shape = cost.add_argument_group("shape (--ladder NAME, or --layers and --d-model)")
    shape.add_argument("--ladder", metavar="NAME", help="a paper ladder shape, e.g. 85M, 1.2B, 13B")
    shape.add_argument("--layers", type=_positive_int, help="number of layers L")
    shape.add_argument("--d-model", type=_positive_int, help="hidden size d")
    shape.add_argument("--q-heads", type=_positive_int, help="query heads n_q (default d_model // head_dim)")
    shape.add_argument("--kv-heads", type=_positive_int, help="KV heads n_kv (default n_q)")
    shape.add_argument("--head-dim", type=_positive_int, default=PAPER_HEAD_DIM, help="head size d_h (default 64)")
    shape.add_argument("--vocab", type=_positive_int, default=PAPER_VOCAB_SIZE, help="vocabulary size V (default 50304)")
    shape.add_argument("--d-ff", type=_positive_int, help="FFN width (default 8d/3 rounded to 32)")
    shape.add_argument("--untied", action="store_true", help="separate output projection (paper ties)")
    shape.add_argument("--ffn-matrices", type=int, choices=(2, 3), default=3,
                       help="FFN matrices costed: 3 = SwiGLU as built, 2 = the paper's table")
    costing = cost.add_argument_group("costing")
    costing.add_argument("--context", type=_contexts, required=True,
                         help="inference context length(s), comma-separated; a mean T is allowed")
    costing.add_argument("--train-context", type=_positive_number, help="training context (default 8192)")
    costing.add_argument("--train-tokens", type=_positive_int, help="training tokens D, for per-run FLOPs")
    costing.add_argument("--batch-size", type=_positive_int, default=1,
                         help="sequences served / per training step (KV cache and activations only)")
    dtypes = [*DTYPE_BYTES, *DTYPE_ALIASES]
    costing.add_argument("--param-dtype", choices=dtypes, default="bfloat16", help="weights dtype")
    costing.add_argument("--kv-dtype", choices=dtypes, default="bfloat16", help="KV cache dtype")
    add_objective_args(cost)
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    cost.set_defaults(handler=_cost)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def _architecture(args: argparse.Namespace) -> Architecture:
    if args.ladder is not None:
        if args.layers is not None or args.d_model is not None:
            raise UsageError("give either --ladder or --layers/--d-model, not both")
        shape = ladder_shape(args.ladder)
        layers, d_model = shape.num_layers, shape.d_model
    elif args.layers is None or args.d_model is None:
        raise UsageError("give --ladder NAME, or both --layers and --d-model")
    else:
        layers, d_model = args.layers, args.d_model
    q_heads = mha_num_heads(d_model, args.head_dim) if args.q_heads is None else args.q_heads
    return Architecture(
        num_layers=layers,
        d_model=d_model,
        num_q_heads=q_heads,
        num_kv_heads=q_heads if args.kv_heads is None else args.kv_heads,
        head_dim=args.head_dim,
        vocab_size=args.vocab,
        d_ff=args.d_ff,
        tie_embeddings=not args.untied,
        ffn_matrices=args.ffn_matrices,
    )


def format_report(report: dict) -> str:
    """A readable table of a cost_report."""
    a, p, t = report["architecture"], report["params"], report["training"]
    obj = report["objective"]
    inference = report["inference"]
    tie = "tied" if a["tie_embeddings"] else "untied"
    rows = [
        [f"architecture: L={a['num_layers']} d={a['d_model']} n_q={a['num_q_heads']} n_kv={a['num_kv_heads']} "
         f"d_h={a['head_dim']} d_ff={a['d_ff']} V={a['vocab_size']} {tie}, {a['ffn_matrices']} FFN matrices"],
        ["parameters"],
        *[[f"  {label}", f"{p[key]:,}", human_count(p[key])] for label, key in (
            ("total", "total"), ("embedding", "embedding"), ("non-embedding", "non_embedding"),
            ("matmul", "matmul"))],
        [f"inference per token (params {report['dtypes']['params']}, KV {report['dtypes']['kv_cache']}, "
         f"batch {report['batch_size']})"],
        ["  context T", *[f"{e['context']:,}" for e in inference]],
        ["  FLOPs, weights (2N)", *[human_flops(e["flops"]["time_invariant"]) for e in inference]],
        ["  FLOPs, attention", *[human_flops(e["flops"]["context"]) for e in inference]],
        ["  FLOPs, total", *[human_flops(e["flops"]["total"]) for e in inference]],
        ["  memory, weights", *[human_bytes(e["memory_bytes"]["weights"]) for e in inference]],
        ["  memory, KV cache", *[human_bytes(e["memory_bytes"]["kv_cache"]) for e in inference]],
        ["  memory, total", *[human_bytes(e["memory_bytes"]["total"]) for e in inference]],
        [f"  Z (lam={obj['lam']:g}, M^{obj['alpha']:.3g} in {obj['memory_unit']}, "
         f"C^{obj['beta']:.3g} in {obj['flops_unit']})", *[f"{e['objective']['z']:.4g}" for e in inference]],
        [f"training (T={t['context']:,}, T_bar={t['mean_attended_context']:,}, "
         f"{'causal' if t['causal'] else 'non-causal'})"],
        ["  FLOPs per token", human_flops(t["flops_per_token"]["total"])],
    ]
    if t["flops_per_run"] is not None:
        rows.append([f"  FLOPs per run ({human_count(t['tokens'])} tokens)", human_flops(t["flops_per_run"]["total"])])
    rows += [[f"  memory, {key.replace('_', ' ')}", human_bytes(value)] for key, value in t["memory_bytes"].items()]
    return render_rows(rows)


def _cost(args: argparse.Namespace) -> str:
    objective = objective_from_args(args)
    report = cost_report(
        _architecture(args), args.context, train_context=args.train_context, train_tokens=args.train_tokens,
        param_dtype=args.param_dtype, kv_dtype=args.kv_dtype, objective=objective, batch_size=args.batch_size,
    )
    return json.dumps(report, indent=2) if args.json else format_report(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user error, reported in one line)."""
    try:
        args = build_parser().parse_args(argv)
        output = args.handler(args)
    except UsageError as error:
        print(f"costlaw: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        message = _FIELD_PATTERN.sub(lambda match: _FIELD_FLAGS[match.group(1)], str(error))
        print(f"costlaw: error: {message}", file=sys.stderr)
        return 2
    print(output)
    return 0
