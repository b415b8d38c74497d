"""Guidance families: a family's interpolated tables against tables distilled at exactly the midpoints.

    python tools/bench_family.py                                   # mnist and digits-text, NFE 4, knots 2:8
    python tools/bench_family.py --models digits-text --nfe 4 8 --knots 2:8:3 --iterations 400
    python tools/bench_family.py --independent                     # also: knots distilled each from scratch
    python tools/bench_family.py --diagnose                        # also: the knots alone, and a table tuned there

For each model and NFE: `distill_family` over the knots (each knot's training started from the previous
knot's table, then the joint stage unless --no-joint), then at every midpoint between two knots, on the test
pairs' dopri5 ground truth at that guidance: the family's interpolated table (and, with the joint stage, the
chained family's before it), a table distilled at exactly that guidance (the same
recipe, from the auto base), and the best classic solver.  With --independent the knots are also distilled
each from the auto base and interpolated the same way (the alternative to chaining them).  With --diagnose, at
each midpoint also the two knot tables around it run as they are, and a table distilled there started from the
family's interpolated table (what the interpolation leaves on the table).  Saves the result
`guidance-family` of docs/benchmarks.md after every model and NFE.  Run it alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchdoc import git_rev, machine, save_result  # noqa: E402

from bns_export.checks import guidance_knots  # noqa: E402
from bns_export.demo import COMPARE, compare_baselines  # noqa: E402
from bns_export.distill import DistillConfig, distill, distill_family, distill_jointly  # noqa: E402
from bns_export.evaluate import evaluate_on  # noqa: E402
from bns_export.groundtruth import SEEDS, ground_truth  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402
from bns_export.solvers import SolverFamily  # noqa: E402


def pairs_for(args):
    """The (train, val) GT sets of a field at its current guidance (cached on disk by the GT cache)."""

    def pairs(field):
        return ground_truth(field, args.train_pairs, SEEDS.train), ground_truth(field, args.val_pairs, SEEDS.val)

    return pairs


def bench_case(model: str, nfe: int, knots: tuple[float, ...], args) -> dict:
    """One model and NFE: the family, and at each midpoint the family vs the exact table vs the baselines."""
    cfg = DistillConfig(nfe=nfe, iterations=args.iterations, batch_size=args.batch_size)
    field = load_model(model, guidance=knots[0])
    pairs = pairs_for(args)
    chained = distill_family(field, knots, pairs, cfg, joint=False)
    family = chained if args.no_joint else distill_jointly(field, chained, pairs, cfg)
    row = {"model": model, "nfe": nfe, "knots": list(knots), "joint": not args.no_joint}
    row["knot_val_psnr"] = [round(t.meta["val_psnr"], 2) for t in family.tables]
    if not args.no_joint:
        row["joint_wall_time_s"] = family.meta["joint"]["wall_time_s"]
    independent = None
    if args.independent:
        tables = []
        for w in knots:
            field.set_guidance(w)
            tables.append(distill(field, *pairs(field), cfg))
        independent = SolverFamily(knots, tables, name="independent")
    row["midpoints"] = []
    for lo, hi in zip(knots, knots[1:]):
        w = (lo + hi) / 2
        field.set_guidance(w)
        test = ground_truth(field, args.test_pairs, SEEDS.eval)
        exact = distill(field, *pairs(field), cfg)
        baselines = compare_baselines(field, test, nfe, COMPARE)
        best = max(baselines, key=lambda r: r["psnr_mean"])
        point = {
            "guidance": w,
            "family": evaluate_on(field, family.at(w), test)["psnr_mean"],
            "exact": evaluate_on(field, exact, test)["psnr_mean"],
            "best_baseline": best["psnr_mean"],
            "best_baseline_name": best["solver"],
        }
        if not args.no_joint:
            point["chained"] = evaluate_on(field, chained.at(w), test)["psnr_mean"]
        if independent is not None:
            point["independent"] = evaluate_on(field, independent.at(w), test)["psnr_mean"]
        if args.diagnose:
            point["lower_knot"] = evaluate_on(field, family.at(lo), test)["psnr_mean"]
            point["upper_knot"] = evaluate_on(field, family.at(hi), test)["psnr_mean"]
            tuned = distill(field, *pairs(field), cfg, init=family.at(w))
            point["tuned"] = evaluate_on(field, tuned, test)["psnr_mean"]
        print(model, nfe, point, flush=True)
        row["midpoints"].append(point)
    return row


#: optional columns: result key, header, what it is (in the order they appear)
EXTRA = (
    ("chained", "chained", "the family before its joint stage (the knots distilled one by one, interpolated)"),
    ("independent", "independent", "the knots distilled each from scratch and interpolated the same way"),
    ("lower_knot", "lower knot", "the knot table below the midpoint, run as it is"),
    ("upper_knot", "upper knot", "the knot table above it, run as it is"),
    ("tuned", "tuned", "a table distilled at the midpoint started from the family's interpolated table"),
)


def markdown(run: dict) -> str:
    extra = [c for c in EXTRA if any(c[0] in p for r in run["rows"] for p in r["midpoints"])]
    lines = [
        "## Guidance families: interpolated tables at the midpoints",
        "",
        f"Command: `{run['command']}` (commit {run['commit']}).  Machine: {run['machine']}.",
        "",
        f"Each family was distilled at the knots listed ({run['iterations']} iterations per knot, "
        f"{run['train_pairs']} / {run['val_pairs']} train / validation pairs, each knot started from the previous "
        "knot's table"
        + (
            ""
            if run.get("no_joint")
            else ", then the joint stage: the knots trained together at the knots and midpoints"
        )
        + "). At every midpoint between two knots, mean PSNR (dB) against the dopri5 ground truth of "
        f"{run['test_pairs']} test pairs at that guidance: *family*, the table interpolated from the two knots "
        "around it (what `eval -w`, the scheduler and the compiled graph run); *exact*, a table distilled at "
        "exactly that guidance with the same recipe; *best baseline*, the best of the classic solvers"
        + "".join(f"; *{header}*, {what}" for _, header, what in extra)
        + ".",
        "",
        "| model | NFE | knots | guidance | family | exact | family - exact | best baseline |"
        + "".join(f" {header} |" for _, header, _ in extra),
        "|---" * (8 + len(extra)) + "|",
    ]
    for r in run["rows"]:
        knots = ", ".join(f"{k:g}" for k in r["knots"])
        for p in r["midpoints"]:
            cells = [r["model"], str(r["nfe"]), knots, f"{p['guidance']:g}", f"{p['family']:.2f}", f"{p['exact']:.2f}"]
            cells += [f"{p['family'] - p['exact']:+.2f}", f"{p['best_baseline']:.2f} ({p['best_baseline_name']})"]
            cells += [f"{p[key]:.2f}" if key in p else "n/a" for key, _, _ in extra]
            lines.append("| " + " | ".join(cells) + " |")
    gaps = [p["family"] - p["exact"] for r in run["rows"] for p in r["midpoints"]]
    if gaps:
        lines += ["", f"Family minus exact: worst {min(gaps):+.2f} dB, mean {sum(gaps) / len(gaps):+.2f} dB."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mnist", "digits-text"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4])
    ap.add_argument("--knots", default="2:8", help="the family's knots: LO:HI[:K] or W1,W2,... (as distill -w)")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    ap.add_argument("--train-pairs", type=int, default=520)
    ap.add_argument("--val-pairs", type=int, default=512)
    ap.add_argument("--test-pairs", type=int, default=256)
    ap.add_argument("--independent", action="store_true", help="also interpolate independently distilled knots")
    ap.add_argument("--no-joint", action="store_true", help="the family without its joint stage (distill --no-joint)")
    ap.add_argument("--diagnose", action="store_true", help="also the knots alone and a table tuned from the family")
    ap.add_argument("--section", default="guidance-family")
    args = ap.parse_args()
    knots = guidance_knots(args.knots)
    run = {"kind": "text", "command": "python tools/bench_family.py " + shlex.join(sys.argv[1:]), "commit": git_rev()}
    run.update(machine=machine(), rows=[], **{k: getattr(args, k) for k in ("iterations", "train_pairs", "val_pairs")})
    run.update(test_pairs=args.test_pairs, no_joint=args.no_joint)
    for model in args.models:
        for nfe in args.nfe:
            run["rows"].append(bench_case(model, nfe, knots, args))
            save_result(args.section, {**run, "body": markdown(run)})


if __name__ == "__main__":
    main()
