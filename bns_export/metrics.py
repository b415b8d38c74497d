"""PSNR against ground truth: 10 log10(R^2 / MSE) per sample, R the data range (2 for [-1, 1])."""

from __future__ import annotations

import torch
from torch import Tensor


def mse_per_sample(x: Tensor, ref: Tensor) -> Tensor:
    return ((x - ref) ** 2).flatten(1).mean(1)


def psnr_per_sample(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    mse = mse_per_sample(x.double(), ref.double()).clamp(min=1e-30)
    return 10.0 * torch.log10(data_range**2 / mse)


def summarize(psnr: Tensor) -> dict:
    """mean, min, median, max and std of per-sample PSNR."""
    p = psnr.double()
    return {
        "psnr_mean": float(p.mean()),
        "psnr_min": float(p.min()),
        "psnr_median": float(p.median()),
        "psnr_max": float(p.max()),
        "psnr_std": float(p.std()) if p.numel() > 1 else 0.0,
    }


def equivalent_nfe(curve: dict[int, float], target: float) -> float | None:
    """The classic-equivalent NFE: where a PSNR-vs-NFE curve (the best classic solver at each measured NFE)
    reaches `target` (a BNS table's PSNR), interpolated linearly in log NFE between the measured NFEs; the
    smallest measured NFE when the curve starts above it, None when it never gets there (above the largest)."""
    import math

    points = sorted((int(n), float(p)) for n, p in curve.items())
    if not points:
        return None
    if target <= points[0][1]:
        return float(points[0][0])
    for (n0, p0), (n1, p1) in zip(points, points[1:]):
        if p0 < target <= p1:
            frac = (target - p0) / (p1 - p0)
            return math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))
    return None
