"""NS solvers: the (t, a, b) table, the one sampling loop, every classic solver as a table, and specs."""

from .classic import BASELINES
from .general import GeneralForm
from .resolve import SolverLike, SolverSpec, baseline, guidance_for, parse_spec, resolve_solver, solver_guidance
from .sampler import ns_sample, sample
from .table import NSSolver

__all__ = [
    "BASELINES",
    "GeneralForm",
    "NSSolver",
    "SolverLike",
    "SolverSpec",
    "baseline",
    "guidance_for",
    "ns_sample",
    "parse_spec",
    "resolve_solver",
    "sample",
    "solver_guidance",
]
