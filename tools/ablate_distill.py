"""Distillation-recipe ablation: the same model, NFE and pairs under several DistillConfig settings;
prints one JSON line per run (test PSNR, iterations run, best iteration, wall time).

    python tools/ablate_distill.py analytic:gmm 16
    python tools/ablate_distill.py digits 8 --iterations 1000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bns_export.distill import DistillConfig, distill
from bns_export.evaluate import EVAL_SEED, TRAIN_SEED, VAL_SEED, evaluate_on
from bns_export.groundtruth import ground_truth
from bns_export.models import load_model

RUNS = [
    ("patience 4 (the old default)", dict(patience=4)),
    ("patience 12 (the default)", dict(patience=12)),
    ("patience 12, 10 halvings", dict(patience=12, max_decays=10)),
    ("lr 1e-3, patience 12", dict(lr=1e-3, patience=12)),
    ("batch 256, patience 12", dict(batch_size=256, patience=12)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("nfe", type=int)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--val-pairs", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(2)
    name, _, w = args.model.partition("@")
    f = load_model(name, guidance=float(w or 1))
    train, val = ground_truth(f, 520, TRAIN_SEED), ground_truth(f, args.val_pairs, VAL_SEED)
    test = ground_truth(f, 256, EVAL_SEED)
    for label, kw in RUNS:
        t0 = time.time()
        cfg = DistillConfig(nfe=args.nfe, iterations=args.iterations, **{"batch_size": 128, **kw})
        s = distill(f, train, val, cfg)
        row = {"model": args.model, "nfe": args.nfe, "run": label, "init": s.meta["base_solver"]}
        row.update(test_psnr=round(evaluate_on(f, s, test)["psnr_mean"], 2), iterations=s.meta["iterations"])
        row.update(best_iteration=s.meta["best_iteration"], wall_s=round(time.time() - t0, 1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
