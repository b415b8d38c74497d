"""bns-export: distill Bespoke Non-Stationary solvers and compile them with the model."""

__version__ = "0.1.0"
