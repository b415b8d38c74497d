"""The ruler: how exact is the default ground truth?  PSNR of the default-tolerance dopri5 solution against a
much tighter one on the same noise, per model; writes the `gt-ceiling` section of docs/benchmarks.md.

    python tools/gt_ceiling.py              # analytic:gmm, analytic:points, digits, mnist@1, mnist@3
    python tools/gt_ceiling.py --models digits --default 1e-6 -n 16 --section gt-ceiling-digits

A reported PSNR is only meaningful well below this ceiling (target: 15 dB below every mean).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.devices import full_fp32  # noqa: E402
from bns_export.groundtruth import dopri5, make_inputs  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402
from bns_export.metrics import psnr_per_sample  # noqa: E402


def reference_tol(tol: float) -> float:
    """The ruler's reference tolerance: 100x tighter than the GT's, and never looser than 1e-8."""
    return min(1e-8, tol / 100)


def solve(field, noise, labels, tol: float):
    t0 = time.time()
    with torch.no_grad(), full_fp32():
        res = dopri5(lambda x, t: field(x, t, labels), field.start(noise), field.t_lo, field.t_hi, tol, tol)
    return res.x, res.nfe, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["analytic:gmm", "analytic:points", "digits", "mnist@1", "mnist@3"])
    ap.add_argument("-n", type=int, default=64, help="pairs per model (seed 0, the evaluation seed)")
    ap.add_argument("--default", type=float, default=None, help="rtol = atol of the GT (default: the model's)")
    ap.add_argument("--tight", type=float, default=None, help="the reference's rtol = atol (default: reference_tol)")
    ap.add_argument("--section", default="gt-ceiling", help="the docs/benchmarks.md section to write")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for spec in args.models:
        name, _, w = spec.partition("@")
        field = load_model(name, guidance=float(w or 1))
        tol = field.gt_tolerance if args.default is None else args.default
        tight = reference_tol(tol) if args.tight is None else args.tight
        noise, labels = make_inputs(field, args.n, 0, field.default_dtype)
        x_def, nfe_def, s_def = solve(field, noise, labels, tol)
        x_tight, nfe_tight, s_tight = solve(field, noise, labels, tight)
        p = psnr_per_sample(x_def, x_tight)
        rows.append((spec, tol, tight, float(p.mean()), float(p.min()), nfe_def, nfe_tight, s_def, s_tight))
        print(rows[-1], flush=True)
    lines = [
        "## Ground-truth ceiling (the ruler)\n",
        f"Command: `python tools/gt_ceiling.py {' '.join(sys.argv[1:])}` (commit {git_rev()}). Machine: {machine()}. "
        f"PSNR of the dopri5 ground truth (rtol = atol = the model's tolerance) against a much tighter solve "
        f"on the same {args.n} evaluation noises (seed 0); a solver's PSNR against the ground truth means "
        "something only well below the ceiling.\n",
        "| model | GT rtol = atol | reference | ceiling mean (dB) | ceiling min (dB) | dopri5 NFE at GT tol | "
        "at reference | GT solve (s) | reference solve (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, tol, tight, mean, mn, nd, nt, sd, st in rows:
        lines.append(f"| {spec} | {tol:g} | {tight:g} | {mean:.1f} | {mn:.1f} | {nd} | {nt} | {sd:.1f} | {st:.0f} |")
    write_section(args.section, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
