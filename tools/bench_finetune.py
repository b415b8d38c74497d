"""Does a distilled table still fit a fine-tune?  The base model's BNS table run on a fine-tune of it, against
the best classic solver there, a table distilled for the fine-tune from the classic bases, and one warm-started
from the base's table (`distill --init TABLE.json`).

    python tools/bench_finetune.py                  # digits, fine-tuned 1000 steps on the digits 0-4 (about 12 min)
    python tools/bench_finetune.py --nfe 6 --iterations 400

The fine-tune is made here (tools/train_model.py digits --init models/digits --classes 0,1,2,3,4) in a temporary
folder; PSNR against its own dopri5 ground truth.  Writes docs/results/finetune.json and the benchmarks page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.distill import DistillConfig, distill  # noqa: E402
from bns_export.evaluate import best_classic, evaluate_on  # noqa: E402
from bns_export.fields import GuidedField  # noqa: E402
from bns_export.groundtruth import SEEDS, ground_truth  # noqa: E402
from bns_export.loaders import load_shipped  # noqa: E402


def fine_tune(work: Path, iterations: int, classes: str) -> tuple[Path, float]:
    """models/digits trained further on a subset of its classes, in `work` (beside a copy of the network code)."""
    shutil.copy(ROOT / "models" / "unet.py", work / "unet.py")
    out = work / "digits-ft"
    cmd = [sys.executable, str(ROOT / "tools" / "train_model.py"), "digits", "--init", str(ROOT / "models" / "digits"),
           "--classes", classes, "--iterations", str(iterations), "--lr", "5e-4", "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return out, time.perf_counter() - t0


def table_rows(base, tuned, what: str, nfe: int, pairs: int, iterations: int, warm: tuple[int, ...]) -> list[tuple]:
    """(label, PSNR, distillation seconds) rows: the base's table on the base and on `tuned` (named `what`), the best
    classic solver on it, a table distilled for it, and tables warm-started from the base's after `warm` iterations;
    each model against its own dopri5 ground truth (train, validation and test sets of `pairs`)."""

    def sets(field):
        return [ground_truth(field, pairs, seed) for seed in (SEEDS.train, SEEDS.val, SEEDS.eval)]

    def table(field, gt, its: int, init=None):
        t0 = time.perf_counter()
        solver = distill(field, gt[0], gt[1], DistillConfig(nfe=nfe, iterations=its, batch_size=64), init=init)
        return solver, time.perf_counter() - t0

    base_gt, tuned_gt = sets(base), sets(tuned)
    base_table, base_s = table(base, base_gt, iterations)
    rows = [("the base's table on the base", evaluate_on(base, base_table, base_gt[2])["psnr_mean"], base_s)]
    rows.append((f"the base's table on {what}", evaluate_on(tuned, base_table, tuned_gt[2])["psnr_mean"], 0))
    classic = best_classic(tuned, tuned_gt[2], nfe)
    rows.append((f"best classic on {what} ({classic['solver']})", classic["psnr_mean"], 0))
    fresh, fresh_s = table(tuned, tuned_gt, iterations)
    rows.append((f"distilled for {what}, {iterations} iterations from the classic bases",
                 evaluate_on(tuned, fresh, tuned_gt[2])["psnr_mean"], fresh_s))  # fmt: skip
    for its in warm:
        warmed, warm_s = table(tuned, tuned_gt, its, init=base_table)
        rows.append((f"warm-started from the base's table (`--base`), {its} iterations",
                     evaluate_on(tuned, warmed, tuned_gt[2])["psnr_mean"], warm_s))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--warm-iterations", type=int, default=100)
    ap.add_argument("--finetune-steps", type=int, default=1000)
    ap.add_argument("--classes", default="0,1,2,3,4")
    ap.add_argument("--pairs", type=int, default=256, help="train, validation and test pairs each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, tune_s = fine_tune(Path(tmp), args.finetune_steps, args.classes)
        base, tuned = (GuidedField(load_shipped(f), 1.0) for f in (ROOT / "models" / "digits", folder))

        rows = table_rows(base, tuned, "the fine-tune", args.nfe, args.pairs, args.iterations,
                          (args.warm_iterations, args.iterations))  # fmt: skip
        for r in rows:
            print(r, flush=True)
    command = "python tools/bench_finetune.py " + " ".join(sys.argv[1:])
    lines = [
        "## A table on a fine-tune: digits trained further on a subset",
        "",
        f"Command: `{command.strip()}` (commit {git_rev()}). Machine: {machine()}.",
        "",
        f"models/digits fine-tuned {args.finetune_steps} Adam steps (lr 5e-4) on the digits {args.classes} "
        f"({tune_s:.0f} s; tools/train_model.py --init --classes). NFE {args.nfe}; PSNR against each model's own "
        f"dopri5 ground truth over {args.pairs} test pairs; {args.pairs} + {args.pairs} training and validation "
        "pairs, batch 64; times are the distillation's wall time on this machine.",
        "",
        "| table | PSNR | distillation |",
        "|---|---|---|",
        *(f"| {label} | {psnr:.2f} dB | {f'{sec:.0f} s' if sec else '-'} |" for label, psnr, sec in rows),
    ]
    write_section("finetune", "\n".join(lines))


if __name__ == "__main__":
    main()
