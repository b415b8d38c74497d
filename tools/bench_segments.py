"""Segment tables against the best classic solver on the same segment: what a pipeline runs with img2img at a
strength, a base model's denoising_end and a refiner's denoising_start (fields.segment).

    python tools/bench_segments.py                          # digits-text at guidance 3, NFE 4 (about 30 min)
    python tools/bench_segments.py --nfe 4 8 --iterations 400

For each segment: the exact pairs (x(t0), x(t1)) of one dopri5 trajectory from noise, every classic solver on
every time grid at NFE n and 2n on the segment, and a BNS table distilled for it; PSNR against x(t1) from the
same x(t0).  Writes docs/results/segments-MODEL.json and the benchmarks page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.distill import DistillConfig, distill  # noqa: E402
from bns_export.evaluate import best_classic, evaluate_on  # noqa: E402
from bns_export.fields.segment import Segment, SegmentSpec  # noqa: E402
from bns_export.groundtruth import SEEDS, ground_truth  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402

SEGMENTS = {
    "img2img, strength 0.5": SegmentSpec("strength", (0.5,)),
    "base, denoising_end 0.8": SegmentSpec("end", (0.8,)),
    "refiner, denoising_start 0.8": SegmentSpec("start", (0.8,)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-text")
    ap.add_argument("-w", "--guidance", type=float, default=3.0)
    ap.add_argument("--nfe", type=int, nargs="+", default=[4])
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-pairs", type=int, default=256)
    ap.add_argument("--val-pairs", type=int, default=128)
    ap.add_argument("--test-pairs", type=int, default=256)
    args = ap.parse_args()
    whole = load_model(args.model, guidance=args.guidance)
    rows = []
    for label, spec in SEGMENTS.items():
        field = Segment(whole, *spec.bounds(whole.t_lo, whole.t_hi))
        gt = {k: ground_truth(field, n, seed) for k, n, seed in
              (("train", args.train_pairs, SEEDS.train), ("val", args.val_pairs, SEEDS.val),
               ("test", args.test_pairs, SEEDS.eval))}  # fmt: skip
        for nfe in args.nfe:
            classic, double = best_classic(field, gt["test"], nfe), best_classic(field, gt["test"], 2 * nfe)
            cfg = DistillConfig(nfe=nfe, iterations=args.iterations, batch_size=args.batch_size)
            t0 = time.perf_counter()
            solver = distill(field, gt["train"], gt["val"], cfg)
            seconds = time.perf_counter() - t0
            bns = evaluate_on(field, solver, gt["test"])["psnr_mean"]
            rows.append((label, f"[{field.t_lo:g}, {field.t_hi:g}]", nfe, bns, classic["solver"],
                         classic["psnr_mean"], double["solver"], double["psnr_mean"], seconds))  # fmt: skip
            print(rows[-1], flush=True)
    command = "python tools/bench_segments.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Segments: {args.model} at guidance {args.guidance:g}",
        "",
        f"Command: `{command.strip()}` (commit {git_rev()}). Machine: {machine()}.",
        "",
        "A table for the part of the trajectory a pipeline runs (`distill --strength / --denoising-end / "
        "--denoising-start`) against every classic solver on every time grid on that segment, PSNR against the "
        f"exact x(t1) from the same exact x(t0) over {args.test_pairs} test pairs. BNS: {args.iterations} "
        f"iterations at batch {args.batch_size}, {args.train_pairs} + {args.val_pairs} pairs (a reduced recipe); "
        "distillation: its wall time on this machine.",
        "",
        "| segment | interval | NFE | BNS | best classic at NFE | best classic at 2 NFE | distillation |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, span, nfe, bns, c, cp, d, dp, sec in rows:
        lines.append(
            f"| {label} | {span} | {nfe} | {bns:.2f} dB | {cp:.2f} dB ({c}) | {dp:.2f} dB ({d}) | {sec:.0f} s |"
        )
    write_section(f"segments-{args.model}", "\n".join(lines))


if __name__ == "__main__":
    main()
