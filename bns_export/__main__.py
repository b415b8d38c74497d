"""`python -m bns_export`: the console script, signal handling first (bns_export.entry)."""

from .entry import main

main()
