"""PSNR evaluation against ground truth: the API behind `eval` and `sample`."""

from __future__ import annotations

import torch

from .groundtruth import SEEDS, GTSet, ground_truth
from .metrics import psnr_per_sample, summarize
from .parallel import SINGLE, World
from .solvers.sampler import sample_batches, solver_tensors
from .solvers.table import NSSolver


def run_solver(
    field, solver: NSSolver, noise: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """Samples of `solver` from `noise`, in batches, without gradients."""
    return sample_batches(field, *solver_tensors(solver, noise.dtype, noise.device), noise, labels, batch_size)


def evaluate_on(field, solver: NSSolver, gt: GTSet, world: World = SINGLE, batch_size: int = 256) -> dict:
    """PSNR summary of `solver` against the GT set (fixed batches shared out over torchrun ranks)."""
    psnr = torch.zeros(len(gt), dtype=torch.float64, device=gt.noise.device)
    for lo in world.mine(range(0, len(gt), batch_size)):
        part = slice(lo, lo + batch_size)
        x = run_solver(field, solver, gt.noise[part], None if gt.labels is None else gt.labels[part], batch_size)
        psnr[part] = psnr_per_sample(x, gt.x1[part])
    report = summarize(world.all_sum(psnr).cpu())
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
    seed: int = SEEDS.eval,
    rtol: float | None = None,
    atol: float | None = None,
    cache_dir: str | None = None,
) -> dict:
    """PSNR of `solver` against the dopri5 ground truth of `n_samples` seeded noises."""
    gt = ground_truth(field, n_samples, seed, rtol, atol, cache_dir=cache_dir)
    report = evaluate_on(field, solver, gt)
    report.update(seed=seed, guidance=float(field.guidance))
    return report
