"""Solver resolution and PSNR evaluation against ground truth: the API behind `eval` and `sample`."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import BNSError
from .groundtruth import GTSet, ground_truth
from .metrics import psnr_per_sample, summarize
from .solvers.classic import BASELINES, baseline
from .solvers.sampler import sample_batches, solver_tensors
from .solvers.table import NSSolver

#: seeds of the three disjoint GT sets: evaluation, distillation training, distillation validation
EVAL_SEED, TRAIN_SEED, VAL_SEED = 0, 1, 2


def resolve_solver(spec: str, field, nfe: int | None = None) -> NSSolver:
    """A baseline name (`rk4`, `heun:karras`, ...) at `nfe`, or a solver file checked against the model."""
    name = spec.partition(":")[0]
    if name in BASELINES and not Path(spec).exists():
        return baseline(spec, nfe or 8, field.schedule, field.t_lo, field.t_hi)
    if not Path(spec).exists():
        raise BNSError(f"unknown solver {spec!r}: not a file and not one of {', '.join(BASELINES)}")
    solver = NSSolver.load(spec)
    check_solver_fits(solver, field, nfe, source=spec)
    return solver


def check_solver_fits(solver: NSSolver, field, nfe: int | None = None, source: str = "solver") -> None:
    """Refuse a solver distilled for another model, guidance, interval or NFE."""
    if nfe is not None and nfe != solver.nfe:
        raise BNSError(f"{source}: NFE mismatch: the solver has {solver.nfe} NFE, {nfe} requested")
    fp = solver.meta.get("model_fingerprint")
    if fp is not None and fp != field.fingerprint():
        raise BNSError(
            f"{source}: model mismatch: solver was distilled for model {fp}, this model is {field.fingerprint()}"
        )
    g = solver.meta.get("guidance")
    if g is not None and float(g) != float(getattr(field, "guidance", 1.0)):
        raise BNSError(
            f"{source}: guidance mismatch: solver was distilled at guidance {g}, "
            f"sampling at {getattr(field, 'guidance', 1.0)}"
        )
    if abs(solver.t[0] - field.t_lo) > 1e-9 or abs(solver.t_end - field.t_hi) > 1e-9:
        raise BNSError(
            f"{source}: interval mismatch: solver runs [{solver.t[0]:g}, {solver.t_end:g}], "
            f"model integrates [{field.t_lo:g}, {field.t_hi:g}]"
        )


def run_solver(
    field, solver: NSSolver, noise: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """Samples of `solver` from `noise`, in batches, without gradients."""
    return sample_batches(field, *solver_tensors(solver, noise.dtype), noise, labels, batch_size)


def evaluate_on(field, solver: NSSolver, gt: GTSet) -> dict:
    """PSNR summary of `solver` against the GT set."""
    x = run_solver(field, solver, gt.noise, gt.labels)
    psnr = psnr_per_sample(x, gt.x1)
    report = summarize(psnr)
    report.update(
        solver=solver.name,
        nfe=solver.nfe,
        n_samples=len(gt),
        gt_nfe_mean=gt.nfe_mean,
        solver_fingerprint=solver.fingerprint(),
    )
    return report


def evaluate(
    field,
    solver: NSSolver,
    n_samples: int = 256,
    seed: int = EVAL_SEED,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cache_dir: str | None = None,
) -> dict:
    """PSNR of `solver` against the dopri5 ground truth of `n_samples` seeded noises."""
    gt = ground_truth(field, n_samples, seed, rtol, atol, cache_dir=cache_dir)
    report = evaluate_on(field, solver, gt)
    report.update(seed=seed, guidance=float(getattr(field, "guidance", 1.0)))
    return report
