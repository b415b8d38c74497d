"""Velocity fields: schedules, the u(x, t, condition) interface, network adapters, analytic fields."""

from .adapters import PREDICTIONS, TIME_INPUTS, NetworkField
from .analytic import ANALYTIC, GaussianMixtureField
from .field import NULL_LABEL, GuidedField, VelocityField
from .schedules import SCHEDULES, Schedule, make_schedule

__all__ = [
    "ANALYTIC",
    "NULL_LABEL",
    "PREDICTIONS",
    "SCHEDULES",
    "TIME_INPUTS",
    "GaussianMixtureField",
    "GuidedField",
    "NetworkField",
    "Schedule",
    "VelocityField",
    "make_schedule",
]
