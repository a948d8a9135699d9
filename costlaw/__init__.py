"""costlaw: records -> fits -> costs -> frontiers; pure Python and numpy, no JAX."""

from costlaw.arch import (
    PAPER_LADDER,
    Architecture,
    LadderShape,
    ParamCounts,
    default_d_ff,
    ladder_shape,
    paper_architecture,
    param_counts,
)
from costlaw.costs import ObjectiveSpec, cost_report, objective_z

__all__ = [
    "PAPER_LADDER",
    "Architecture",
    "LadderShape",
    "ObjectiveSpec",
    "ParamCounts",
    "cost_report",
    "default_d_ff",
    "ladder_shape",
    "objective_z",
    "paper_architecture",
    "param_counts",
]
