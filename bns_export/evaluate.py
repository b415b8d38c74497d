"""PSNR evaluation against ground truth and seeded samples: the API behind `eval` and `sample`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checks import integer
from .devices import device_of
from .errors import BNSError
from .fields import GuidedField
from .fields.segment import TOLERANCE, Segment, SegmentSpec
from .groundtruth import SEEDS, GTSet, ground_truth, make_inputs
from .images import grid, write_npz, write_png
from .loaders import ModelOptions, ModelSpec, load_model
from .metrics import equivalent_nfe, psnr_per_sample, summarize
from .parallel import SINGLE, World
from .solvers import BASELINES, SolverLike, baseline, guidance_for, parse_spec, resolve_solver
from .solvers.grids import GRIDS
from .solvers.sampler import sample_batches, solver_tensors
from .solvers.table import NSSolver


def run_solver(
    field, solver: NSSolver, noise: torch.Tensor, condition: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """Samples of `solver` from `noise`, in batches, without gradients."""
    return sample_batches(field, *solver_tensors(solver, noise.dtype, noise.device), noise, condition, batch_size)


def evaluate_on(field, solver: NSSolver, gt: GTSet, world: World = SINGLE, batch_size: int = 256) -> dict:
    """PSNR summary of `solver` against the GT set (fixed batches shared out over torchrun ranks)."""
    psnr = torch.zeros(len(gt), dtype=torch.float64, device=gt.noise.device)
    for lo in world.mine(range(0, len(gt), batch_size)):
        part = slice(lo, lo + batch_size)
        x = run_solver(field, solver, gt.noise[part], gt.condition_at(part), batch_size)
        psnr[part] = psnr_per_sample(x, gt.x1[part])
    report = summarize(world.all_sum(psnr).cpu())
    report.update(
        solver=solver.name,
        nfe=solver.nfe,
        n_samples=len(gt),
        gt_nfe_mean=gt.nfe_mean,
        solver_fingerprint=solver.fingerprint(),
    )
    if gt.ruler is not None:  # a classic reference: its own accuracy bounds what the PSNR can show
        report["gt_ruler"] = gt.ruler
    return report


def every_classic() -> list[str]:
    """Every classic solver on every time grid, as specs (`euler:uniform`, ...)."""
    return [f"{name}:{grid}" for name in BASELINES for grid in GRIDS]


def best_classic(field, gt: GTSet, nfe: int, world: World = SINGLE) -> dict | None:
    """The best classic solver over every solver and grid that runs at `nfe` on the field (its eval report), or
    None when none does (a grid the model has no pipeline for is skipped)."""
    best = None
    for spec in every_classic():
        if nfe % BASELINES[spec.partition(":")[0]].nfe_per_step:
            continue
        try:
            solver = baseline(spec, nfe, field.schedule, field.t_lo, field.t_hi)
        except (BNSError, ValueError):
            continue
        report = {**evaluate_on(field, solver, gt, world), "solver": spec}
        if best is None or report["psnr_mean"] > best["psnr_mean"]:
            best = report
    return best


def classic_equivalent(field, gt: GTSet, psnr: float, nfe: int, world: World = SINGLE) -> dict:
    """The classic-equivalent NFE of a PSNR measured at `nfe`: the best classic over every solver and grid at n,
    1.5n, 2n and 3n, and the NFE where that curve reaches the PSNR (metrics.equivalent_nfe; None: beyond 3n)."""
    curve = {}
    for m in sorted({nfe, (3 * nfe + 1) // 2, 2 * nfe, 3 * nfe}):
        best = best_classic(field, gt, m, world)
        if best is not None:
            curve[m] = {"solver": best["solver"], "psnr_mean": best["psnr_mean"]}
    n_eq = equivalent_nfe({m: c["psnr_mean"] for m, c in curve.items()}, psnr)
    return {"n_eq": n_eq, "n_eq_ratio": None if n_eq is None else n_eq / nfe, "best_classic": curve}


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


def load_with_solver(
    model: str | ModelSpec,
    solver: SolverLike,
    options: ModelOptions | None = None,
    guidance: float | None = None,
    nfe: int | None = None,
    device: str = "cpu",
    network_dtype: str = "fp32",
    segment: SegmentSpec | bool | None = None,
) -> tuple[GuidedField, NSSolver]:
    """The model at the solver's guidance (the one asked for, else the solver file's, else 1) and the solver
    checked against it: the one policy `eval`, `sample` and `compile` apply, reading a solver file once.
    `segment`: the part of the interval to run (fields.segment), or True for a solver file's own segment."""
    spec = parse_spec(solver)
    field = load_model(model, options, guidance_for(spec, guidance), device, network_dtype)
    bounds = segment.bounds(field.t_lo, field.t_hi) if isinstance(segment, SegmentSpec) else None
    if segment is True and spec.is_file:  # a table distilled for a segment runs on it
        bounds = (float(spec.table.t[0]), float(spec.table.t_end))
    if bounds is not None and (abs(bounds[0] - field.t_lo) > TOLERANCE or abs(bounds[1] - field.t_hi) > TOLERANCE):
        field = Segment(field, *bounds)
    return field, resolve_solver(spec, field, nfe)


@dataclass
class Samples:
    """What `draw_samples` made: the seeded noise, its conditions (class labels or condition tensors, None when
    unconditional), the samples, the decoded images (with a decoder) and the solver that made them."""

    noise: torch.Tensor
    condition: torch.Tensor | None
    samples: np.ndarray
    images: np.ndarray | None
    solver: NSSolver


def draw_samples(
    field: GuidedField,
    solver: NSSolver,
    n_samples: int = 16,
    seed: int = 0,
    label: int | None = None,
    decoder: torch.nn.Module | None = None,
) -> Samples:
    """Sample `n_samples` seeded noises (one class `label` for all, or random conditions), decode them if given
    a decoder, and refuse non-finite results."""
    n_samples = integer(n_samples, "n_samples", 1, 1_000_000)
    noise, condition = make_inputs(field, n_samples, seed, field.default_dtype)
    if label is not None:
        if field.num_classes is None or not 0 <= label < field.num_classes:
            raise BNSError(f"label {label} is not a class of this model")
        condition = torch.full((n_samples,), label, dtype=torch.long)
    dev = device_of(field)
    latents = run_solver(field, solver, noise.to(dev), None if condition is None else condition.to(dev)).float()
    images = None
    if decoder is not None:
        with torch.no_grad():
            images = decoder.to(dev)(latents).float().cpu().numpy()
    samples = latents.cpu().numpy()
    if not np.isfinite(samples).all() or (images is not None and not np.isfinite(images).all()):
        raise BNSError(f"the model produced NaN or inf samples with {solver.name}; nothing written")
    return Samples(noise, condition, samples, images, solver)


def check_sample_path(path: str | Path) -> Path:
    """A sample file's path: a known suffix in an existing folder (checked before minutes of sampling)."""
    path = Path(path)
    if path.suffix not in SAMPLE_WRITERS:
        raise BNSError(f"sample files end in {' or '.join(SAMPLE_WRITERS)}, got {path.name!r}")
    if not path.parent.exists():
        raise BNSError(f"output folder does not exist: {path.parent}")
    return path


def write_samples(path: str | Path, drawn: Samples) -> None:
    """Write samples as a PNG grid (the decoded images when there are any) or an .npz of every array."""
    path = check_sample_path(path)
    SAMPLE_WRITERS[path.suffix](path, drawn)


def _write_png(path: Path, drawn: Samples) -> None:
    shown = drawn.samples if drawn.images is None else drawn.images
    write_png(path, grid(shown, scale=max(1, 64 // shown.shape[-1]) if shown.ndim == 4 else 1))


def _write_npz(path: Path, drawn: Samples) -> None:
    c = drawn.condition
    tensor_cond = c is not None and c.is_floating_point()  # conditions drawn from the condition set
    write_npz(
        path,
        noise=drawn.noise.float().numpy(),
        samples=drawn.samples,
        labels=None if c is None or tensor_cond else c.numpy(),
        cond=c.float().numpy() if tensor_cond else None,
        images=drawn.images,
    )


#: sample file formats, by suffix
SAMPLE_WRITERS = {".png": _write_png, ".npz": _write_npz}
