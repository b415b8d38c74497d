"""bns-export: distill Bespoke Non-Stationary solvers and compile them with the model."""

import sys

__version__ = "0.1.0"

if sys.argv[:1] == ["-m"]:  # `python -m bns_export[.cli]` is being located: from here on a signal ends the run in one
    from .interrupts import install_early  # line with 128 + signal, before the CLI's heavy imports (bns_export.entry)

    install_early()
