"""PSNR against ground truth versus NFE: every baseline and BNS, per model; writes docs/benchmarks.md.

    python tools/bench_psnr.py                       # shipped models (digits; mnist at w=1 and w=3)
    python tools/bench_psnr.py --models analytic:gmm analytic:points --nfe 4 8 16
    python tools/bench_psnr.py --ablation digits     # times-only vs full BNS, sigma_0 in {1, 2, 5}

A model may carry a guidance scale: `mnist@3`.  The run is saved (also while it runs) as the result
docs/results/SECTION.json (`--section`, default psnr), from which tools/benchdoc.py renders its tables
and its plot docs/SECTION.png into docs/benchmarks.md.  `--render RUN.json ...` merges saved runs (one
process per NFE on a GPU, say) into that result without recomputing.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchdoc import RESULTS, git_rev, gpu_note, machine, save_result  # noqa: E402
from psnrdoc import best_baseline, build_parser  # noqa: E402

from bns_export.demo import compare_baselines  # noqa: E402
from bns_export.devicespec import is_cuda  # noqa: E402
from bns_export.distill import DistillConfig, distill  # noqa: E402
from bns_export.evaluate import evaluate_on  # noqa: E402
from bns_export.groundtruth import SEEDS, ground_truth  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402


def parse_model(spec: str) -> tuple[str, float]:
    name, _, w = spec.partition("@")
    return name, float(w) if w else 1.0


def load_sets(spec: str, args, timing: dict | None = None):
    """The (guided) field of `spec` and its train / validation / test ground-truth sets; `timing` gets the
    seconds the train + validation GT took (what a user's distillation pays once per model)."""
    name, w = parse_model(spec)
    field = load_model(name, guidance=w, device=args.device)
    t0 = time.time()
    train = val = None
    if not getattr(args, "baselines_only", False):  # baselines need only the test pairs
        train, val = (
            ground_truth(field, n, seed) for n, seed in ((args.train_pairs, SEEDS.train), (args.val_pairs, SEEDS.val))
        )
    if timing is not None and train is not None:
        timing["gt_train_val_s"] = round(time.time() - t0, 1)
    return field, train, val, ground_truth(field, args.test_pairs, SEEDS.eval)


def ceiling(field, test, n: int) -> dict:
    """The ruler: PSNR of the first n test GT samples against a tighter solve (reference_tol)."""
    from gt_ceiling import reference_tol, solve

    from bns_export.metrics import psnr_per_sample

    labels = test.condition_at(slice(n))
    tight = reference_tol(field.gt_tolerance)
    x_tight, nfe, _ = solve(field, test.noise[:n].to(field.default_dtype), labels, tight)
    p = psnr_per_sample(test.x1[:n], x_tight)
    return {"ceiling_mean": float(p.mean()), "ceiling_min": float(p.min()), "ceiling_pairs": n, "ceiling_tol": tight}


def training_seconds(name: str) -> float | None:
    """The shipped model's own training wall time (models/NAME/training.json), if recorded."""
    path = ROOT / "models" / name / "training.json"
    return json.loads(path.read_text()).get("wall_time_s") if path.exists() else None


def bench_model(spec: str, nfes: list[int], args, out: dict, save: Callable[[], None]) -> None:
    """Fill `out` with one model's rows; `save()` after each NFE keeps partial results."""
    name, w = parse_model(spec)
    t0 = time.time()
    timing: dict = {}
    field, train, val, test = load_sets(spec, args, timing)
    out.update(
        {
            "model": name,
            "guidance": w,
            "gt_nfe_mean": test.nfe_mean,
            "gt_tolerance": field.gt_tolerance,
            "gt_seconds": round(time.time() - t0, 1),
            **timing,
            "training_s": training_seconds(name),
            "pairs": [0 if s is None else len(s) for s in (train, val, test)],
            "rows": {},
        }
    )
    if args.ceiling_pairs:
        out.update(ceiling(field, test, min(args.ceiling_pairs, len(test))))
        print(f"{spec}: ceiling {out['ceiling_mean']:.1f} dB mean, {out['ceiling_min']:.1f} min", flush=True)
    save()
    if args.gt_only:
        return
    for nfe in nfes:
        row = {r["solver"]: r["psnr_mean"] for r in compare_baselines(field, test, nfe)}
        if args.baselines_only:
            out["rows"][nfe] = {**row, "_requested": True}
            print(f"{spec} NFE {nfe}: best baseline {best_baseline(row):.2f} dB", flush=True)
            continue
        cfg = DistillConfig(nfe=nfe, base=args.base, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr)
        solver = distill(field, train, val, cfg)
        row["BNS"] = evaluate_on(field, solver, test)["psnr_mean"]
        row["_bns_base"] = solver.meta["base_solver"]
        row["_distill_s"] = solver.meta["wall_time_s"]
        row["_iterations"] = solver.meta["iterations"]
        out["rows"][nfe] = row
        print(
            f"{spec} NFE {nfe}: BNS {row['BNS']:.2f} dB, best baseline {best_baseline(row):.2f} dB "
            f"({row['_distill_s']:.0f} s)",
            flush=True,
        )
        save()
    for nfe in sorted({2 * n for n in nfes} - set(nfes)):  # baselines only, for the "BNS at n vs 2n" target
        out["rows"][nfe] = {r["solver"]: r["psnr_mean"] for r in compare_baselines(field, test, nfe)}
    save()


def ablation(spec: str, nfe: int, args) -> list[dict]:
    field, train, val, test = load_sets(spec, args)
    runs = [
        ("full BNS, midpoint init", dict(base="midpoint")),
        ("times only, midpoint init", dict(base="midpoint", learn="times")),
        ("full BNS, auto init", dict(base="auto")),
    ]
    runs += [(f"full BNS, midpoint init, sigma_0 = {s:g}", dict(base="midpoint", precondition=s)) for s in (2.0, 5.0)]
    rows = []
    for label, kw in runs:
        iters = args.ablation_iterations or args.iterations
        cfg = DistillConfig(nfe=nfe, iterations=iters, batch_size=args.batch_size, lr=args.lr, **kw)
        solver = distill(field, train, val, cfg)
        rows.append(
            {
                "run": label,
                "init_val_psnr": solver.meta["base_val_psnr"],
                "test_psnr": evaluate_on(field, solver, test)["psnr_mean"],
                "iterations": solver.meta["iterations"],
                "wall_time_s": solver.meta["wall_time_s"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def merge_runs(runs: list[dict]) -> dict:
    """One run from several (e.g. one process per NFE on a GPU): rows united per model and guidance; the
    ground-truth time is the largest (the run that solved it; the others read the cache)."""
    merged: dict[tuple, dict] = {}
    for run in runs:
        for res in run["results"]:
            cur = merged.setdefault((res["model"], res["guidance"]), {"rows": {}})
            for k, v in res.items():
                if k == "rows":
                    cur["rows"].update({int(n): r for n, r in v.items()})
                elif k in ("gt_seconds", "gt_train_val_s"):
                    cur[k] = max(cur.get(k) or 0, v or 0)
                else:
                    cur.setdefault(k, v)
    for cur in merged.values():
        cur["rows"] = dict(sorted(cur["rows"].items()))

    def finished(run: dict) -> bool:  # a run with a BNS row: its command and settings head the section
        return any("BNS" in row for res in run["results"] for row in res.get("rows", {}).values())

    base = next((r for r in runs if finished(r)), runs[0])
    more = f" and {len(runs) - 1} more runs, merged" if len(runs) > 1 else base.get("merged_note", "")
    return {**base, "merged_note": more, "results": list(merged.values())}


def main() -> None:
    args = build_parser().parse_args()
    if args.render:
        run = merge_runs([json.loads(Path(p).read_text()) for p in args.render])
        run.pop("name", None)
        run.pop("kind", None)
    else:
        if is_cuda(args.device):  # fp32 as on the CPU: no TF32 in baselines or distillation either
            import torch

            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        run = {
            "command": "python tools/bench_psnr.py " + shlex.join(sys.argv[1:]),
            "commit": git_rev(),
            "machine": machine() + gpu_note(args.device),
            "results": [],
            "ablation": None,
        }

        saved = Path(args.json) if args.json else RESULTS / f"{args.section}.json"

        def save() -> None:  # partial results survive an interruption
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"name": args.section, "kind": "psnr", **run}, indent=2))

        for m in args.models:
            run["results"].append({})
            bench_model(m, args.nfe, args, run["results"][-1], save)
        if args.ablation:
            run["ablation"] = ablation(args.ablation, 8, args)
        save()
        if args.gt_only:
            return
    save_result(args.section, {"kind": "psnr", **run})


if __name__ == "__main__":
    main()
