"""The `bns-export` console script: signal handling first, then the CLI (see bns_export.interrupts)."""

from .interrupts import ignore_late_signals, install_early


def main() -> None:
    """Install the early signal handlers before importing anything heavy, then run the CLI."""
    install_early()
    try:
        from .cli import main as cli_main

        cli_main()
    finally:
        ignore_late_signals()
