"""The end-to-end demo: ground truth, distil a BNS solver, compare with every baseline, write
a side-by-side sample grid and a PSNR table (and, where a compiler step is registered, compile
and validate the solver with the model)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .backends import DEFAULT_FORMAT
from .distill import DistillConfig, distill_model
from .errors import BNSError
from .evaluate import evaluate_on, run_solver
from .fileio import atomic_write_text
from .groundtruth import SEEDS, GTSet, ground_truth
from .images import labelled_grid, write_png
from .loaders import load_model
from .solvers import BASELINES, baseline, parse_spec
from .solvers.table import NSSolver

#: the baselines a comparison runs: each solver on its default grid, plus the common variants
COMPARE = ["euler", "midpoint", "heun", "rk4", "ab2", "ddim", "dpm++2m", "heun:karras", "dpm++2m:karras"]
COMPARE += ["dpm++3m", "unipc", "unipc-bh1", "deis", "ipndm", "unipc:karras", "deis:karras"]


@dataclass
class DemoContext:
    """What the demo produced; later steps (compile, validate) receive it."""

    model: str
    field: torch.nn.Module
    solver: NSSolver
    solver_path: Path
    out_dir: Path
    device: str = "cpu"
    report: dict = field(default_factory=dict)
    gts: dict = field(default_factory=dict)
    distill_config: DistillConfig | None = None


def _compile(ctx: DemoContext, solver_path: Path, nfe: int) -> tuple[Path, dict]:
    from .compile.build import compile_artifact

    folder = ctx.out_dir / f"{DEFAULT_FORMAT}-bns-{nfe}"
    manifest = compile_artifact(
        ctx.model,
        str(solver_path),
        DEFAULT_FORMAT,
        folder,
        guidance=ctx.field.guidance,
        max_batch=16,
        device=ctx.device,
        log=lambda m: None,
    )
    return folder, manifest


def compile_step(ctx: DemoContext) -> dict:
    """Compile the distilled solver with the model to ONNX and validate parity against eager PyTorch."""
    t0 = time.time()
    folder, manifest = _compile(ctx, ctx.solver_path, ctx.solver.nfe)
    v = manifest["validation"]
    return {
        "artifact": str(folder),
        "passed": v["passed"],
        "parity_psnr_min": v["psnr_min"],
        "gate_db": v["gate_db"],
        "max_abs_error": v["max_abs_error"],
        "wall_time_s": round(time.time() - t0, 1),
    }


def latency_step(ctx: DemoContext, repeat: int = 20) -> dict:
    """What the artifact buys at batch 1: its median latency against the eager PyTorch loop's."""
    import statistics

    from .runtime import load

    runner = load(ctx.out_dir / f"onnx-bns-{ctx.solver.nfe}", device="cpu", require_signature=False)  # built here
    test = ctx.gts["test"]
    noise = test.noise[:1].float()
    condition = test.condition_at(slice(1))

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    eager = median_ms(lambda: run_solver(ctx.field, ctx.solver, test.noise[:1], condition))
    art = median_ms(lambda: runner(noise.cpu().numpy(), None if condition is None else condition.cpu().numpy()))
    return {"batch": 1, "eager_ms": round(eager, 2), "artifact_ms": round(art, 2), "speedup": round(eager / art, 1)}


def triton_step(ctx: DemoContext) -> dict:
    """A Triton model repository serving the model at NFE n/2 and n (a second solver distilled alike)."""
    from .runtime.artifact import OpenPolicy
    from .runtime.triton import write_repository

    half = max(2, ctx.solver.nfe // 2)
    half_path = ctx.out_dir / f"bns-{half}.json"
    cfg = replace(ctx.distill_config, nfe=half)
    distill_model(ctx.field, half_path, cfg, sets=(ctx.gts["train"], ctx.gts["val"]))
    folder, _ = _compile(ctx, half_path, half)
    versions = [folder, ctx.out_dir / f"onnx-bns-{ctx.solver.nfe}"]
    # the demo's own ONNX artifacts, just built: no signature policy from the environment applies
    repo = write_repository(versions, ctx.out_dir / "triton", ctx.model, replace=True, policy=OpenPolicy())
    return {"repository": str(repo.parent), "model": repo.name, "versions": {"1": half, "2": ctx.solver.nfe}}


#: steps run after distillation and comparison; each returns a JSON-able dict for the report
POST_STEPS: list[tuple[str, Callable[[DemoContext], dict]]] = [
    ("compile", compile_step),
    ("latency", latency_step),
    ("triton", triton_step),
]


def compare_baselines(fld, gt, nfe: int, names: list[str] = COMPARE) -> list[dict]:
    """PSNR of every baseline that can run at `nfe` NFE."""
    rows = []
    for spec in names:
        per_step = BASELINES[parse_spec(spec).name].nfe_per_step
        if nfe % per_step:
            continue
        rows.append(evaluate_on(fld, baseline(spec, nfe, fld.schedule, fld.t_lo, fld.t_hi), gt))
    return rows


def psnr_table(rows: list[dict]) -> str:
    """Markdown table of solver, NFE, PSNR mean/min/median."""
    lines = ["| solver | NFE | PSNR mean (dB) | min | median |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["psnr_mean"]):
        lines.append(
            f"| {r['solver']} | {r['nfe']} | {r['psnr_mean']:.2f} | {r['psnr_min']:.2f} | {r['psnr_median']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def demo_ground_truth(fld, counts: dict[str, int], log: Callable[[str], None]) -> dict[str, GTSet]:
    """The demo's three disjoint GT sets (train, val, test) from their seeds, each timed in the log."""
    seeds = {"train": SEEDS.train, "val": SEEDS.val, "test": SEEDS.eval}
    gts = {}
    for name, n in counts.items():
        t0 = time.time()
        gts[name] = ground_truth(fld, n, seeds[name])
        log(f"ground truth ({name}): {n} pairs, dopri5 mean {gts[name].nfe_mean:.0f} NFE, {time.time() - t0:.1f} s")
    return gts


def write_grid(path: Path, fld, solver: NSSolver, best: NSSolver, test: GTSet, k: int = 12) -> None:
    """The demo's picture: rows of ground truth / BNS / the best baseline on the first k test noises."""
    k = min(k, len(test))
    lab = test.condition_at(slice(k))
    rows = [test.x1[:k], run_solver(fld, solver, test.noise[:k], lab), run_solver(fld, best, test.noise[:k], lab)]
    stack = torch.cat(rows).float().cpu().numpy()
    if stack.ndim == 4:
        titles = ["ground truth", f"BNS {solver.nfe}", f"{best.name} {best.nfe}"]
        write_png(path, labelled_grid(stack, titles, ncol=k, scale=max(1, 48 // stack.shape[-1])))


def run_demo(
    model: str = "digits",
    nfe: int = 8,
    out_dir: str | Path = "exported/demo",
    guidance: float = 1.0,
    train_pairs: int = 520,
    val_pairs: int = 256,
    test_pairs: int = 256,
    iterations: int = 400,
    batch_size: int = 64,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Run the demo and write solver, grid, table and report into `out_dir`."""
    started = time.time()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BNSError(f"cannot create output folder {out}: {e.strerror}") from None
    fld = load_model(model, guidance=guidance, device=device)
    log(
        f"model {model}: shape {fld.sample_shape}, interval [{fld.t_lo:g}, {fld.t_hi:g}], guidance {guidance:g}, "
        f"device {device}"
    )
    gts = demo_ground_truth(fld, {"train": train_pairs, "val": val_pairs, "test": test_pairs}, log)
    cfg = DistillConfig(nfe=nfe, base="auto", iterations=iterations, batch_size=batch_size)
    solver_path = out / f"bns-{nfe}.json"
    t0 = time.time()
    solver = distill_model(fld, solver_path, cfg, sets=(gts["train"], gts["val"]), progress=progress)
    log(f"distilled {solver_path}: {solver.meta['iterations']} iterations, {time.time() - t0:.1f} s")
    rows = compare_baselines(fld, gts["test"], nfe)
    bns_row = evaluate_on(fld, solver, gts["test"])
    bns_row["solver"] = f"BNS ({solver.meta['base_solver']} init)"
    best = max(rows, key=lambda r: r["psnr_mean"])
    table = psnr_table([bns_row, *rows])
    log("\n" + table)
    test = gts["test"]
    write_grid(out / "grid.png", fld, solver, baseline(best["solver"], nfe, fld.schedule, fld.t_lo, fld.t_hi), test)
    report = {
        "model": model,
        "nfe": nfe,
        "guidance": guidance,
        "bns": bns_row,
        "baselines": rows,
        "best_baseline": best["solver"],
        "gain_db": bns_row["psnr_mean"] - best["psnr_mean"],
        "distill_wall_time_s": solver.meta["wall_time_s"],
        "gt_nfe_mean": test.nfe_mean,
        "grid": "grid.png (rows: ground truth, BNS, best baseline)",
    }
    ctx = DemoContext(model, fld, solver, solver_path, out, device, report, gts, cfg)
    for name, step in POST_STEPS:
        log(f"{name} ...")
        report[name] = step(ctx)
        log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in report[name].items()))
    report["wall_time_s"] = round(time.time() - started, 1)
    atomic_write_text(out / "psnr.md", f"# {model}, {nfe} NFE, guidance {guidance:g}\n\n{table}")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=_jsonable) + "\n")
    log(
        f"BNS {bns_row['psnr_mean']:.2f} dB vs best baseline {best['solver']} {best['psnr_mean']:.2f} dB "
        f"(+{report['gain_db']:.2f} dB); wrote {out}/ in {report['wall_time_s']:.0f} s"
    )
    return report


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)
