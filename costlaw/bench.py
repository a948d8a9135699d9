"""Benchmark of the analysis pipeline on synthetic records: python -m costlaw.bench [--records 1000] [--bootstrap 200] [--json OUT]."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from costlaw.fit import fit_heads, fit_joint
from costlaw.records import load_records
from costlaw.report import ReportOptions, build_report
from costlaw.synthetic import PAPER_HEADS, TRAINED_LADDER, smooth_laws, synthetic_records

TARGET_SECONDS = 30.0  # the target for fit + bootstrap + report on 1,000 records


@dataclass(frozen=True)
class Stage:
    """One timed step; run(state) reads and adds entries of the shared state dict."""

    name: str
    run: Callable[[dict], None]
    in_target: bool = True  # counted towards TARGET_SECONDS


def _load(state: dict) -> None:
    state["loaded"] = load_records([state["dir"]])


def _fit_only(state: dict) -> None:
    fit_heads(state["loaded"].records, bootstrap=0)


def _fit_bootstrap(state: dict) -> None:
    state["fit"] = fit_heads(state["loaded"].records, bootstrap=state["bootstrap"], seed=0)


def _joint(state: dict) -> None:
    state["joint"] = fit_joint(state["loaded"].records)


def _report(state: dict) -> None:
    options = ReportOptions(bootstrap=state["bootstrap"])
    build_report(state["loaded"], Path(state["dir"]) / "report", options)


# The pipeline in order. The report repeats the fits it shows (per-H with bootstrap, joint), so the
# target is load + report; the separate fit stages show where the report's time goes.
STAGES: tuple[Stage, ...] = (
    Stage("load records", _load),
    Stage("fit all H, no bootstrap (for reference)", _fit_only, in_target=False),
    Stage("fit all H + bootstrap (for reference)", _fit_bootstrap, in_target=False),
    Stage("joint model + leave-one-H-out (for reference)", _joint, in_target=False),
    Stage("report: fits + bootstrap + joint + search + plots", _report),
)


def run(records: int, bootstrap: int) -> dict:
    """Write `records` synthetic records (21 head configurations x the trained ladder x seeds), time every stage."""
    seeds = max(1, math.ceil(records / (len(PAPER_HEADS) * len(TRAINED_LADDER))))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = synthetic_records(smooth_laws(), TRAINED_LADDER, seeds=seeds, out_dir=folder, seed=0)[:records]
        keep = set(paths)
        for path in Path(folder).rglob("record.json"):
            if path not in keep:
                path.unlink()
        written = time.perf_counter() - start
        state = {"dir": folder, "bootstrap": bootstrap}
        timings = {}
        for stage in STAGES:
            start = time.perf_counter()
            stage.run(state)
            timings[stage.name] = time.perf_counter() - start
    total = sum(timings[stage.name] for stage in STAGES if stage.in_target)
    return {
        "records": len(state["loaded"].records),
        "head_configurations": len(state["fit"].fits),
        "bootstrap": bootstrap,
        "write_seconds": written,
        "stages": timings,
        "pipeline_seconds": total,
        "target_seconds": TARGET_SECONDS,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
    }


def format_result(result: dict) -> str:
    lines = [f"{result['records']} records, {result['head_configurations']} head configurations, "
             f"{result['bootstrap']} bootstrap resamples (writing them took {result['write_seconds']:.1f} s)"]
    width = max(len(name) for name in result["stages"])
    lines += [f"  {name.ljust(width)}  {seconds:8.2f} s" for name, seconds in result["stages"].items()]
    verdict = "within" if result["pipeline_seconds"] <= result["target_seconds"] else "OVER"
    lines.append(f"  {'pipeline (target stages)'.ljust(width)}  {result['pipeline_seconds']:8.2f} s  "
                 f"({verdict} the {result['target_seconds']:.0f} s target)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m costlaw.bench", description=__doc__)
    parser.add_argument("--records", type=int, default=1000, help="synthetic records to generate (default 1000)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the timings as JSON to OUT")
    args = parser.parse_args(argv)
    if args.records < 3 * len(PAPER_HEADS) or args.bootstrap < 0:
        parser.error(f"--records must be >= {3 * len(PAPER_HEADS)} (3 sizes per head configuration) "
                     "and --bootstrap >= 0")
    result = run(args.records, args.bootstrap)
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
