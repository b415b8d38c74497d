"""Image sizes: how far a table distilled at one size is from the ground truth at other sizes.

    python tools/bench_sizes.py                                  # digits-text 8x8 and mnist 28x28, NFE 4
    python tools/bench_sizes.py --models digits-text --nfe 4 8 --iterations 400

For each model and NFE: a table distilled at the model's own size (the base), then at every other size three
tables on the dopri5 ground truth of the test pairs at that size: the base table (what a graph compiled with
`--sizes` runs there), a table distilled at exactly that size with the same recipe, and the best classic
solver.  If the base table loses more than 1 dB to the exact one, per-size tables would be worth carrying.
Saves the result `sizes` of docs/benchmarks.md after every model and NFE.  Run it alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_family import pairs_for  # noqa: E402
from benchdoc import git_rev, machine, save_result  # noqa: E402

from bns_export.demo import COMPARE, compare_baselines  # noqa: E402
from bns_export.distill import DistillConfig, distill  # noqa: E402
from bns_export.evaluate import evaluate_on  # noqa: E402
from bns_export.groundtruth import SEEDS, ground_truth  # noqa: E402
from bns_export.loaders import ModelOptions, load_model  # noqa: E402
from bns_export.sizes import parse_size, resize_shape  # noqa: E402

#: the other sizes each shipped model is measured at (the base is its own)
OTHER_SIZES = {"digits-text": ("12x12", "16x16", "16x8"), "mnist": ("20x20", "36x36", "28x36"), "digits": ("16x16",)}


def bench_case(model: str, nfe: int, args) -> dict:
    """One model and NFE: the base table, and at each other size base vs exact vs the best baseline."""
    cfg = DistillConfig(nfe=nfe, iterations=args.iterations, batch_size=args.batch_size)
    pairs = pairs_for(args)
    field = load_model(model, guidance=args.guidance)
    base_shape = field.sample_shape
    base = distill(field, *pairs(field), cfg)
    row = {"model": model, "nfe": nfe, "base": "x".join(map(str, base_shape[-2:])), "sizes": []}
    for text in args.sizes or OTHER_SIZES[model]:
        shape = resize_shape(base_shape, parse_size(text))
        field = load_model(model, ModelOptions(shape=shape), guidance=args.guidance)
        test = ground_truth(field, args.test_pairs, SEEDS.eval)
        exact = distill(field, *pairs(field), cfg)
        best = max(compare_baselines(field, test, nfe, COMPARE), key=lambda r: r["psnr_mean"])
        point = {
            "size": text,
            "base_table": evaluate_on(field, base, test)["psnr_mean"],
            "exact": evaluate_on(field, exact, test)["psnr_mean"],
            "best_baseline": best["psnr_mean"],
            "best_baseline_name": best["solver"],
        }
        print(model, nfe, point, flush=True)
        row["sizes"].append(point)
    return row


def markdown(run: dict) -> str:
    lines = [
        "## Image sizes: a table distilled at one size, run at others",
        "",
        f"Command: `{run['command']}` (commit {run['commit']}).  Machine: {run['machine']}.",
        "",
        f"Each table was distilled with the same recipe ({run['iterations']} iterations, {run['train_pairs']} / "
        f"{run['val_pairs']} train / validation pairs, guidance {run['guidance']:g}). At every size, mean PSNR (dB) "
        f"against the dopri5 ground truth of {run['test_pairs']} test pairs at that size: *base table*, the table "
        "distilled at the model's own size (what a graph compiled with `--sizes` runs at every size); *exact*, a "
        "table distilled at that size; *best baseline*, the best of the classic solvers there.",
        "",
        "| model | NFE | distilled at | run at | base table | exact | base - exact | best baseline |",
        "|---" * 8 + "|",
    ]
    for r in run["rows"]:
        for p in r["sizes"]:
            cells = [r["model"], str(r["nfe"]), r["base"], p["size"], f"{p['base_table']:.2f}", f"{p['exact']:.2f}"]
            cells += [f"{p['base_table'] - p['exact']:+.2f}", f"{p['best_baseline']:.2f} ({p['best_baseline_name']})"]
            lines.append("| " + " | ".join(cells) + " |")
    gaps = [p["base_table"] - p["exact"] for r in run["rows"] for p in r["sizes"]]
    if gaps:
        lines += ["", f"Base minus exact: worst {min(gaps):+.2f} dB, mean {sum(gaps) / len(gaps):+.2f} dB."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits-text", "mnist"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4])
    ap.add_argument("--sizes", nargs="+", default=None, help="other sizes HxW (default: per model)")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    ap.add_argument("--train-pairs", type=int, default=520)
    ap.add_argument("--val-pairs", type=int, default=512)
    ap.add_argument("--test-pairs", type=int, default=256)
    ap.add_argument("--section", default="sizes")
    args = ap.parse_args()
    run = {"kind": "text", "command": "python tools/bench_sizes.py " + shlex.join(sys.argv[1:]), "commit": git_rev()}
    run.update(machine=machine(), rows=[], **{k: getattr(args, k) for k in ("iterations", "train_pairs", "val_pairs")})
    run.update(test_pairs=args.test_pairs, guidance=args.guidance)
    for model in args.models:
        for nfe in args.nfe:
            run["rows"].append(bench_case(model, nfe, args))
            save_result(args.section, {**run, "body": markdown(run)})


if __name__ == "__main__":
    main()
