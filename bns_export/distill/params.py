"""The table as trainable parameters (method.md section 3): one BNS table, or a guidance family's knot tables run
at each sample's own scale, and the validation score both are kept by."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BNSError
from ..groundtruth import GTSet
from ..metrics import psnr_per_sample
from ..parallel import SINGLE, World
from ..solvers.sampler import family_tables, ns_sample, recomputed, sample_batches
from ..solvers.table import NSSolver, SolverFamily
from .config import DistillConfig


class BNSParams(nn.Module):
    """Trainable (t, a, b) of an n-NFE NS solver, initialised from a base solver's table.

    Times: `time_param="t"` spaces them by softmax fractions of [t_lo, t_end] (method.md 3);
    `"logsnr"` by fractions of the log-SNR range, mapped back through a dense monotone table of the
    schedule.  Coefficients: `coef_scale="step"` learns b_ij / h_j, with h_j the init's j-th step
    length, so one Adam learning rate moves every b by the same relative amount (b scales like dt;
    +0.9 to +2.8 dB at equal learning rate on digits and the analytic fields, docs/benchmarks.md);
    `"none"` learns b itself.
    """

    def __init__(self, init: NSSolver, time_param: str = "t", coef_scale: str = "step", schedule=None) -> None:
        super().__init__()
        n = init.nfe
        self.t_lo, self.t_end = float(init.t[0]), float(init.t_end)
        inc = np.diff(np.append(init.t, init.t_end))
        if np.any(inc <= 0):
            raise BNSError(
                f"base solver {init.name} repeats a time; BNS needs strictly increasing times "
                "(use midpoint, euler, ab2, ddim or dpm++2m as base)"
            )
        self.warp = _LogSNRWarp(schedule, self.t_lo, self.t_end) if time_param == "logsnr" else None
        if self.warp is not None:
            # the warp's table as buffers: .to(device) moves it once, not on every tables() call; not
            # persistent, so checkpoints and best-solver snapshots stay the size of (t, a, b)
            self.register_buffer("warp_t", self.warp.t, persistent=False)
            self.register_buffer("warp_lam", self.warp.lam, persistent=False)
            lam = self.warp.lam_of(init.t[1:])
            inc_w = np.diff(np.concatenate([[self.warp.lo], lam, [self.warp.hi]]))
            if np.any(inc_w <= 0):
                raise BNSError(f"base solver {init.name} has a time outside the finite log-SNR range")
            self.logits = nn.Parameter(torch.log(torch.as_tensor(inc_w / (self.warp.hi - self.warp.lo))))
        else:
            self.logits = nn.Parameter(torch.log(torch.as_tensor(inc / (self.t_end - self.t_lo), dtype=torch.float64)))
        h = torch.as_tensor(inc, dtype=torch.float64) if coef_scale == "step" else torch.ones(n, dtype=torch.float64)
        self.register_buffer("b_scale", h.reshape(1, n).expand(n, n).clone())
        # copies of the init's numbers, never views: training must not write into the table it started from
        self.a = nn.Parameter(torch.tensor(init.a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(init.b, dtype=torch.float64) / self.b_scale)
        self.register_buffer("mask", torch.tril(torch.ones(n, n, dtype=torch.float64)))

    def tables(self, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """(t, a, b) in the sampling dtype on the sampling device (differentiable)."""
        cum = torch.cumsum(torch.softmax(self.logits, 0), 0)[:-1]
        if self.warp is not None:
            inner = _interp(self.warp.lo + (self.warp.hi - self.warp.lo) * cum, self.warp_lam, self.warp_t)
        else:
            inner = self.t_lo + (self.t_end - self.t_lo) * cum
        t = torch.cat([inner.new_full((1,), self.t_lo), inner])
        return tuple(v.to(dtype=dtype, device=device) for v in (t, self.a, self.b * self.b_scale * self.mask))

    def solver(self, name: str = "bns", **meta) -> NSSolver:
        t, a, b = (v.detach().cpu().numpy() for v in self.tables())
        return NSSolver(t, a, b, self.t_end, name=name, meta=meta)

    def sample(self, field, gt: GTSet, idx: Tensor, recompute: bool = False, shift: Tensor | None = None) -> Tensor:
        """The loop's samples of the GT pairs at `idx`, differentiable in the table (the BNS loss's forward);
        recompute: each network call's activations recomputed in the backward pass (`recomputed`); shift: added
        to the pairs' noises (a tolerance-ball run's offsets)."""
        t, a, b = self.tables(gt.noise.dtype, gt.noise.device)
        u = recomputed(field, len(t)) if recompute else field
        return ns_sample(u, t, a, b, field.start(shifted(gt.noise[idx], shift)), gt.condition_at(idx))

    def score(self, field, val: GTSet, world: World = SINGLE) -> float:
        """Mean validation PSNR of the table."""
        return mean_psnr(field, self.tables(val.noise.dtype, val.noise.device), val, world)


class FamilyParams(nn.Module):
    """Trainable tables at a guidance family's knots (a BNSParams each), run at every sample's own guidance with
    the tables interpolated there exactly as the compiled graph does (`family_tables`): the family as one model."""

    def __init__(self, family: SolverFamily, cfg: DistillConfig, schedule=None) -> None:
        super().__init__()
        self.register_buffer("knots", torch.as_tensor(family.knots, dtype=torch.float64), persistent=False)
        self.knot_params = nn.ModuleList(BNSParams(t, cfg.time_param, cfg.coef_scale, schedule) for t in family.tables)

    def tables_at(self, guidance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, a, b) at each guidance (B,) in its dtype: (n, B), (n, B), (n, n, B)."""
        tables = [p.tables(guidance.dtype, guidance.device) for p in self.knot_params]
        stacked = tuple(torch.stack(v) for v in zip(*tables))
        return family_tables(self.knots.to(guidance), stacked, guidance)

    def sample(self, field, gt: GTSet, idx: Tensor, recompute: bool = False, shift: Tensor | None = None) -> Tensor:
        """The loop's samples of the pairs at `idx`, each at its pair's guidance (`gt.guidance`)."""
        w = gt.guidance[idx].to(gt.noise.dtype)
        t, a, b = self.tables_at(w)
        u = functools.partial(field, guidance=w)
        u = recomputed(u, len(t)) if recompute else u
        return ns_sample(u, t, a, b, field.start(shifted(gt.noise[idx], shift)), gt.condition_at(idx))

    def score(self, field, val: list[tuple[float, GTSet]], world: World = SINGLE) -> float:
        """Mean validation PSNR over the guidance points, each set run at its own scale."""
        scores = []
        for w, gt in val:
            field.set_guidance(w)
            t, a, b = self.tables_at(torch.full((1,), w, dtype=gt.noise.dtype, device=gt.noise.device))
            scores.append(mean_psnr(field, (t[:, 0], a[:, 0], b[:, :, 0]), gt, world))
        return sum(scores) / len(scores)

    def family(self, like: SolverFamily, tables_meta: list[dict], meta: dict) -> SolverFamily:
        """The trained tables as a family with the knots and names of `like`, each knot with its record."""
        tables = [p.solver(t.name, **m) for p, t, m in zip(self.knot_params, like.tables, tables_meta)]
        return SolverFamily(like.knots, tables, name=like.name, meta=meta)


def shifted(noise: Tensor, shift: Tensor | None) -> Tensor:
    """The pairs' noises, moved by a tolerance-ball run's offsets when there are any."""
    return noise if shift is None else noise + shift


class _LogSNRWarp:
    """t as a function of log-SNR lambda on [t_lo, t_end]: piecewise-linear on a dense grid of t
    (2^16 + 1 points; differentiable in lambda), restricted to where lambda is finite."""

    def __init__(self, schedule, t_lo: float, t_end: float, points: int = 65537) -> None:
        if schedule is None:
            raise BNSError("time_param='logsnr' needs the field's schedule")
        t = torch.linspace(t_lo, t_end, points, dtype=torch.float64)
        with torch.no_grad():
            lam = schedule.log_snr(t)
        keep = torch.isfinite(lam)
        self.t, self.lam = t[keep], torch.cummax(lam[keep], 0).values  # monotone for searchsorted
        if self.lam.numel() < 2 or not bool((torch.diff(self.lam) > 0).all()):
            raise BNSError("time_param='logsnr' needs a strictly increasing log-SNR on the interval")
        self.lo, self.hi = float(self.lam[0]), float(self.lam[-1])

    def lam_of(self, t: np.ndarray) -> np.ndarray:
        """log-SNR of times by the same table (so _interp back through it returns t at the init)."""
        return np.interp(t, self.t.numpy(), self.lam.numpy())


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp increasing, x clamped to its range; differentiable in x."""
    x = torch.clamp(x, xp[0], xp[-1])
    k = torch.searchsorted(xp, x.detach()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[k - 1], xp[k], fp[k - 1], fp[k]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def mean_psnr(field, tables: tuple[Tensor, Tensor, Tensor], gt: GTSet, world: World, batch_size: int = 256) -> float:
    """Mean per-sample PSNR over gt: fixed batches shared out over the ranks, sums all-reduced."""
    total = torch.zeros(2, dtype=torch.float64, device=gt.noise.device)
    for lo in world.mine(range(0, len(gt), batch_size)):
        part = slice(lo, lo + batch_size)
        x = sample_batches(field, *tables, gt.noise[part], gt.condition_at(part), batch_size)
        psnr = psnr_per_sample(x, gt.x1[part])
        total += torch.stack([psnr.sum(), torch.tensor(float(psnr.numel()), device=psnr.device)])
    total = world.all_sum(total)
    return float(total[0] / total[1])
