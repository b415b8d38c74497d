"""Time grids T_0 = t_lo < ... < T_m = t_hi for the classic solvers.

uniform in t; EDM/Karras (rho = 7) in sigma_ve = sigma/alpha; uniform in log-SNR.  Karras and
log-SNR grids clamp sigma_ve to [0.002, 80] (EDM's range) and pin the end points to the field's
interval, so they also work on paths whose end points have infinite SNR (FM-OT on [0, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BNSError
from ..fields.pipelines import DiscreteGrid
from ..fields.schedules import DDPMDiscrete, Schedule

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
GRIDS = ("uniform", "karras", "logsnr", "diffusers", "pipeline")


def _log_snr(schedule: Schedule, t: np.ndarray) -> np.ndarray:
    tt = torch.as_tensor(t, dtype=torch.float64)
    with np.errstate(divide="ignore"):
        return (torch.log(schedule.alpha(tt)) - torch.log(schedule.sigma(tt))).numpy()


def _t_of_log_snr(schedule: Schedule, lam: np.ndarray, t_lo: float, t_hi: float) -> np.ndarray:
    """Invert the (increasing) log-SNR by bisection on [t_lo, t_hi]."""
    lo = np.full_like(lam, t_lo)
    hi = np.full_like(lam, t_hi)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = _log_snr(schedule, mid) < lam
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _lam_range(schedule: Schedule, t_lo: float, t_hi: float) -> tuple[float, float]:
    lam = _log_snr(schedule, np.array([t_lo, t_hi]))
    return max(lam[0], -np.log(SIGMA_MAX)), min(lam[1], -np.log(SIGMA_MIN))


def diffusers_grid(schedule: Schedule, m: int) -> np.ndarray:
    """The timesteps diffusers' multistep schedulers (DPM-Solver++, UniPC, DEIS) use with the model's scheduler
    config (its timestep_spacing and steps_offset; "linspace" by default), as our times: step k at
    t = 1 - (k + 1) / T, ending at step 0 (final_sigmas_type "sigma_min")."""
    if not isinstance(schedule, DDPMDiscrete):
        raise BNSError(f"the diffusers grid needs a discrete ddpm schedule, not {schedule.name}")
    own = schedule.pipeline
    spacing, offset = (own.spacing, own.offset) if isinstance(own, DiscreteGrid) else ("linspace", 0)
    return DiscreteGrid("DPMSolverMultistepScheduler", spacing, offset, style="n+1").times(schedule, m)


def pipeline_grid(schedule: Schedule, m: int) -> np.ndarray:
    """The grid the model's own diffusers pipeline steps on by default (fields.pipelines: its scheduler's
    set_timesteps with what the pipeline passes it, from the folder's scheduler config)."""
    if schedule.pipeline is None:
        raise BNSError(
            f"the pipeline grid needs a diffusers folder whose scheduler bns-export mirrors, not {schedule.name}"
        )
    return schedule.pipeline.times(schedule, m)


def make_grid(kind: str, m: int, schedule: Schedule, t_lo: float, t_hi: float, rho: float = 7.0) -> np.ndarray:
    """m + 1 grid times from t_lo to t_hi."""
    if kind == "uniform":
        return np.linspace(t_lo, t_hi, m + 1)
    if kind == "diffusers":
        return diffusers_grid(schedule, m)
    if kind == "pipeline":
        return pipeline_grid(schedule, m)
    lam_lo, lam_hi = _lam_range(schedule, t_lo, t_hi)
    if kind == "karras":
        smax, smin = np.exp(-lam_lo), np.exp(-lam_hi)
        i = np.arange(m + 1) / m
        sig = (smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        lam = -np.log(sig)
    elif kind == "logsnr":
        lam = np.linspace(lam_lo, lam_hi, m + 1)
    else:
        raise ValueError(f"unknown grid {kind!r}; choose one of {', '.join(GRIDS)}")
    grid = _t_of_log_snr(schedule, lam, t_lo, t_hi)
    grid[0], grid[-1] = t_lo, t_hi
    return grid
