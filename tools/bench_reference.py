"""Cheaper ground truths for big models, measured against dopri5 on the shipped ones: how accurate is a classic
solver at a fixed high NFE (`--reference SOLVER:GRID@NFE`), and does its ruler (dopri5 on 8 pairs) say so?
Writes the `gt-reference` section of docs/benchmarks.md.

    python tools/bench_reference.py                      # digits, digits-text@3, mnist@3; 64 pairs
    python tools/bench_reference.py --models digits --references unipc:karras@32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.groundtruth import SEEDS, ground_truth  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402
from bns_export.metrics import psnr_per_sample  # noqa: E402
from bns_export.solvers.resolve import classic_reference  # noqa: E402

REFERENCES = ["unipc:karras@16", "unipc:karras@32", "unipc:karras@64", "dpm++2m:karras@64"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "digits-text@3", "mnist@3"])
    ap.add_argument("--references", nargs="+", default=REFERENCES)
    ap.add_argument("-n", type=int, default=64, help="pairs per model (the evaluation seed)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:  # measured afresh, never from a cache
        for spec in args.models:
            name, _, w = spec.partition("@")
            field = load_model(name, guidance=float(w or 1))
            truth = ground_truth(field, args.n, SEEDS.eval, cache_dir=cache)
            for ref in args.references:
                gt = ground_truth(field, args.n, SEEDS.eval, cache_dir=cache, reference=classic_reference(ref))
                error = psnr_per_sample(gt.x1, truth.x1)
                rows.append((spec, ref, float(error.mean()), float(error.min()), gt.ruler, truth.nfe_mean))
                print(rows[-1], flush=True)
    lines = [
        "## Cheaper ground truths (classic references)",
        "",
        f"Command: `{' '.join(['python tools/bench_reference.py', *sys.argv[1:]])}` (commit {git_rev()}). "
        f"Machine: {machine()}.",
        "",
        "`--reference SOLVER:GRID@NFE` solves the ground truth with a classic solver at a fixed NFE, for models "
        "whose dopri5 solve is too slow. *vs dopri5*: that reference's PSNR against the dopri5 ground truth (the "
        f"model's tolerance) on the same {args.n} evaluation pairs, the error it adds to every PSNR measured "
        "against it; *ruler*: what the tool itself measures and reports for it (its PSNR against dopri5 on the first "
        "8 pairs), which `eval` prints and warns at when a PSNR comes within 10 dB of it.",
        "",
        "| model | reference | vs dopri5 mean | vs dopri5 min | ruler | dopri5 NFE |",
        "|---|---|---|---|---|---|",
    ]
    for spec, ref, mean, mn, ruler, nfe in rows:
        lines.append(f"| {spec} | {ref} | {mean:.1f} dB | {mn:.1f} dB | {ruler:.1f} dB | {nfe:.0f} |")
    write_section("gt-reference", "\n".join(lines))


if __name__ == "__main__":
    main()
