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
