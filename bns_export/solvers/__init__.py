"""NS solvers: the (t, a, b) table, the one sampling loop, every classic solver as a table, and specs."""

from .classic import BASELINES
from .general import GeneralForm
from .resolve import (
    SolverLike,
    SolverSpec,
    baseline,
    guidance_for,
    parse_spec,
    resolve_solver,
    resolve_table,
    solver_guidance,
)
from .sampler import ns_sample, sample
from .table import NSSolver, SolverFamily, Table, load_solver

__all__ = [
    "BASELINES",
    "GeneralForm",
    "NSSolver",
    "SolverFamily",
    "Table",
    "SolverLike",
    "SolverSpec",
    "baseline",
    "guidance_for",
    "load_solver",
    "ns_sample",
    "parse_spec",
    "resolve_solver",
    "resolve_table",
    "sample",
    "solver_guidance",
]
