"""NS solvers: the (t, a, b) table, the one sampling loop, and every classic solver as a table."""

from .classic import BASELINES, baseline
from .general import GeneralForm
from .sampler import ns_sample, sample
from .table import NSSolver

__all__ = ["BASELINES", "GeneralForm", "NSSolver", "baseline", "ns_sample", "sample"]
