"""Distillation-recipe ablation: the same model, NFE and pairs under several DistillConfig settings;
prints one JSON line per run (test and train PSNR, iterations run, best iteration, wall time).

    python tools/ablate_distill.py analytic:gmm 16                  # the early-stopping runs
    python tools/ablate_distill.py digits 8 --set recipe --section ablation-recipe-digits

`--set recipe` varies one thing at a time from the default recipe: iterations, batch, learning rate
and its schedule (plateau halvings), the initialisation, preconditioning sigma_0, the time
parametrisation, the coefficient scaling and what is learned; `--set ideas` tries the published learned
solvers' levers on today's default (per-group step sizes, S4S-Alt's alternation, a cosine schedule;
`--set ideas-longer`: a longer cosine schedule, the init the best classic solver gives; `--set ball`: LD3's
tolerance-ball loss; `--set pairs`: fewer, more or cheaper training pairs); `--set time-lr` the times' step size;
`--set held-out` the recipe's other levers again, for the held-out model, and `--set held-out-recipe` the claims
the recipe and ideas sets made on digits.
`--section NAME` also writes the table as a result for docs/recipe.md; `--log FILE` keeps
each finished run, so a killed ablation resumes.  Every row also says how soon the run got within 0.5 dB of its
best validation PSNR and how good its table was after 1, 2 and 4 minutes (the quality-per-minute view).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bns_export.distill import DistillConfig, distill
from bns_export.evaluate import evaluate_on
from bns_export.groundtruth import SEEDS, ground_truth
from bns_export.loaders import load_model

OLD = dict(lr=3e-3, warmup=0)  # the learning rate and warmup of the default recipe before the warmup runs
RUN_SETS = {
    # measured with the recipe of its time: b unscaled, lr 3e-3, no warmup
    "patience": [
        (label, {"coef_scale": "none", **OLD, **kw})
        for label, kw in [
            ("patience 4 (the old default)", dict(patience=4)),
            ("patience 12 (the default)", dict(patience=12)),
            ("patience 12, 10 halvings", dict(patience=12, max_decays=10)),
            ("lr 1e-3, patience 12", dict(lr=1e-3, patience=12)),
            ("batch 256, patience 12", dict(batch_size=256, patience=12)),
        ]
    ],
    # measured before the warmup runs, when the default was lr 3e-3 without warmup: every row states both
    "recipe": [
        (label, {**OLD, **kw})
        for label, kw in [
            ("lr 3e-3, no warmup (auto init, 2000 it., batch 128, b per step length, times in t)", {}),
            ("b unscaled (the default before these runs)", dict(coef_scale="none")),
            ("iterations 4000", dict(iterations=4000)),
            ("batch 64", dict(batch_size=64)),
            ("lr 1e-2", dict(lr=1e-2)),
            ("lr 3e-2", dict(lr=3e-2)),
            ("lr 3e-2, b unscaled", dict(lr=3e-2, coef_scale="none")),
            ("lr constant (no plateau halvings)", dict(max_decays=0, patience=10_000)),
            ("init midpoint (the paper's)", dict(base="midpoint")),
            ("times in log-SNR", dict(time_param="logsnr")),
            ("times only (a, b from the init)", dict(learn="times")),
        ]
    ],
    "scale": [
        ("b unscaled, lr 3e-3 (the default before these runs)", dict(coef_scale="none", **OLD)),
        ("b per step length, lr 3e-3", OLD),
        ("b per step length, lr 1e-2", dict(lr=1e-2, warmup=0)),
        ("b per step length, lr 3e-2", dict(lr=3e-2, warmup=0)),
        ("b per step length, lr 1e-2, warmup 100", dict(lr=1e-2, warmup=100)),
        ("b per step length, lr 3e-2, warmup 100 (the default)", {}),
    ],
    # the levers of the published learned solvers, each on today's default recipe
    "ideas": [
        ("the default recipe", {}),
        ("times' lr x0.3", dict(time_lr=0.3)),
        ("times' lr x3", dict(time_lr=3.0)),
        ("alternating: times, then a and b, 100 iterations each (S4S-Alt)", dict(alternate=100)),
        ("cosine decay", dict(schedule="cosine")),
    ],
    "ideas-longer": [
        ("4000 iterations, cosine decay", dict(iterations=4000, schedule="cosine")),
        ("init deis:karras", dict(base="deis:karras")),
    ],
    # LD3's tolerance ball: each training pair's noise may move within `ball` x its norm (DistillConfig.ball)
    "ball": [
        ("tolerance ball 0.01 (LD3)", dict(ball=0.01)),
        ("tolerance ball 0.05 (LD3)", dict(ball=0.05)),
    ],
    # the training pairs: how many, and how exact (`train_pairs`, `train_rtol`: this tool's, not DistillConfig's)
    "pairs": [
        ("2080 training pairs", dict(train_pairs=2080)),
        ("cheaper pairs: dopri5 at rtol = atol = 1e-4", dict(train_rtol=1e-4)),
        ("260 training pairs", dict(train_pairs=260)),
    ],
    # the recipe's other levers, asked again on the held-out model
    "held-out": [
        ("times in log-SNR", dict(time_param="logsnr")),
        ("lr 1e-2", dict(lr=1e-2)),
        ("preconditioning sigma_0 = 1", dict(precondition=1.0)),
    ],
    # the claims the recipe and ideas sets made on digits, asked again on the held-out model
    "held-out-recipe": [
        ("the default recipe", {}),
        ("b unscaled", dict(coef_scale="none")),
        ("lr 3e-3, no warmup (the default before the recipe runs)", dict(lr=3e-3, warmup=0)),
        ("lr 3e-2, no warmup", dict(warmup=0)),
        ("init midpoint (the paper's)", dict(base="midpoint")),
        ("init midpoint, 3000 iterations", dict(base="midpoint", iterations=3000)),
        ("times only (a, b from the init)", dict(learn="times")),
        ("alternating: times, then a and b, 100 iterations each (S4S-Alt)", dict(alternate=100)),
        ("cosine decay", dict(schedule="cosine")),
        ("2000 iterations, cosine decay", dict(iterations=2000, schedule="cosine")),
    ],
    # the times' step size, the lever the ideas set found
    "time-lr": [
        ("the default recipe", {}),
        ("times' lr x3", dict(time_lr=3.0)),
        ("times' lr x10", dict(time_lr=10.0)),
    ],
    "warmup": [
        ("lr 1e-2, warmup 100", dict(lr=1e-2, warmup=100)),
        ("lr 3e-2, warmup 100 (the default)", {}),
    ],
}


MINUTES = (1, 2, 4)  # the quality-per-minute columns: best validation PSNR after this many minutes


def after(curve: list[tuple[float, float]], seconds: float) -> float | None:
    """The best validation PSNR a run had `seconds` into it (its last if it ended sooner; None before the first)."""
    seen = [v for t, v in curve if t <= seconds]
    return round(seen[-1], 2) if seen else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("nfe", type=int)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--val-pairs", type=int, default=512)
    ap.add_argument("--set", default="patience", choices=sorted(RUN_SETS), help="which runs")
    ap.add_argument("--section", default=None, help="also write this docs/recipe.md section")
    ap.add_argument("--runs", type=int, default=None, help="only the set's first N runs")
    ap.add_argument(
        "--log", default=None, help="JSON lines file: each finished run is appended; runs already there are reused"
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    name, _, w = args.model.partition("@")
    f = load_model(name, guidance=float(w or 1))
    val, test = ground_truth(f, args.val_pairs, SEEDS.val), ground_truth(f, 256, SEEDS.eval)
    rows = []
    logged = {}
    if args.log and Path(args.log).is_file():
        for line in Path(args.log).read_text().splitlines():
            row = json.loads(line) if line.startswith("{") else None
            if row and (row["model"], row["nfe"]) == (args.model, args.nfe):
                logged[row["run"]] = row
    for label, kw in RUN_SETS[args.set][: args.runs]:
        if label in logged:  # a killed ablation resumes: its finished runs are not run again
            rows.append(logged[label])
            continue
        kw = dict(kw)
        tol = kw.pop("train_rtol", None)
        train = ground_truth(f, kw.pop("train_pairs", 520), SEEDS.train, rtol=tol, atol=tol)
        t0, curve = time.time(), []
        cfg = DistillConfig(nfe=args.nfe, **{"iterations": args.iterations, "batch_size": 128, **kw})

        def record(it, info, t0=t0, curve=curve):
            curve.append((time.time() - t0, info["best_val_psnr"]))

        s = distill(f, train, val, cfg, progress=record)
        row = {"model": args.model, "nfe": args.nfe, "run": label, "init": s.meta["base_solver"]}
        row.update(test_psnr=round(evaluate_on(f, s, test)["psnr_mean"], 2), iterations=s.meta["iterations"])
        row.update(best_iteration=s.meta["best_iteration"], wall_s=round(time.time() - t0, 1))
        row.update(train_pairs=len(train), gt_nfe=round(train.nfe_mean, 1), train_psnr=round(s.meta["train_psnr"], 2))
        row.update(near_best_s=round(next(t for t, v in curve if v >= curve[-1][1] - 0.5), 1) if curve else None)
        row.update(val_after_min={str(m): after(curve, 60 * m) for m in MINUTES})
        print(json.dumps(row), flush=True)
        if args.log:
            with open(args.log, "a") as log:
                log.write(json.dumps(row) + "\n")
        rows.append(row)
    if args.section:
        write_table(args, rows)


def write_table(args, rows: list[dict]) -> None:
    """The runs as a docs/benchmarks.md section, with the command and machine."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchdoc import git_rev, machine, write_section

    argv = sys.argv[1:]
    if "--log" in argv:  # where finished runs were kept changes what is rerun, never a result
        i = argv.index("--log")
        argv = argv[:i] + argv[i + 2 :]
    command = " ".join(argv)
    lines = [
        f"## Distillation recipe ablation ({args.set}): {args.model}, NFE {args.nfe}\n",
        f"Command: `python tools/ablate_distill.py {command}` (commit {git_rev()}). "
        f"Machine: {machine()}. 520 train pairs unless the label says otherwise, {args.val_pairs} validation and "
        "256 test pairs (dopri5 at the model's tolerance); each run's settings are in its label and in the `--set` "
        "of tools/ablate_distill.py. *GT NFE*: the training pairs' mean dopri5 evaluations per pair.\n",
        "| run | init | test PSNR (dB) | train PSNR (dB) | iterations run | best iteration | wall (s) "
        "| within 0.5 dB of its best (s) | best validation PSNR after 1 / 2 / 4 min (dB) | training pairs | GT NFE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        near = "" if r.get("near_best_s") is None else f"{r['near_best_s']:.0f}"
        minutes = r.get("val_after_min") or {}
        per_minute = " / ".join("-" if minutes.get(str(m)) is None else f"{minutes[str(m)]:.2f}" for m in MINUTES)
        lines.append(
            f"| {r['run']} | {r['init']} | {r['test_psnr']:.2f} | {r.get('train_psnr', '')} | {r['iterations']} | "
            f"{r['best_iteration']} | "
            f"{r['wall_s']:.0f} | {near} | {per_minute if minutes else ''} | {r.get('train_pairs', 520)} | "
            f"{r.get('gt_nfe', '')} |"
        )
    write_section(args.section, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
