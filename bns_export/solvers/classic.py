"""Every classic solver as an exact NS table, each a short function over one time grid.

Each builder takes the grid T_0..T_m and returns the general form (see general.py);
`resolve.baseline` picks the grid and converts.  NFE per step: Euler/AB2/DDIM/DPM-Solver++(2M) 1, midpoint/Heun 2,
RK4 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..fields.schedules import Schedule
from .general import GeneralForm


def euler(T: np.ndarray) -> GeneralForm:
    g = GeneralForm(T)
    for i in range(len(T) - 1):
        g.step(i, c={i: 1.0}, d={i: T[i + 1] - T[i]})
    return g


def midpoint(T: np.ndarray) -> GeneralForm:
    """RK-Midpoint: stage at T_k + h/2, step x_{k+1} = x_k + h u(stage)."""
    times = []
    for k in range(len(T) - 1):
        times += [T[k], T[k] + 0.5 * (T[k + 1] - T[k])]
    g = GeneralForm([*times, T[-1]])
    for k in range(len(T) - 1):
        h, i = T[k + 1] - T[k], 2 * k
        g.step(i, c={i: 1.0}, d={i: 0.5 * h})
        g.step(i + 1, c={i: 1.0}, d={i + 1: h})
    return g


def heun(T: np.ndarray) -> GeneralForm:
    """Heun (trapezoidal RK2): Euler predictor to T_{k+1}, then the average slope."""
    times = []
    for k in range(len(T) - 1):
        times += [T[k], T[k + 1]]
    g = GeneralForm([*times, T[-1]])
    for k in range(len(T) - 1):
        h, i = T[k + 1] - T[k], 2 * k
        g.step(i, c={i: 1.0}, d={i: h})
        g.step(i + 1, c={i: 1.0}, d={i: 0.5 * h, i + 1: 0.5 * h})
    return g


def rk4(T: np.ndarray) -> GeneralForm:
    """Classic fourth-order Runge-Kutta."""
    times = []
    for k in range(len(T) - 1):
        h = T[k + 1] - T[k]
        times += [T[k], T[k] + 0.5 * h, T[k] + 0.5 * h, T[k + 1]]
    g = GeneralForm([*times, T[-1]])
    for k in range(len(T) - 1):
        h, i = T[k + 1] - T[k], 4 * k
        g.step(i, c={i: 1.0}, d={i: 0.5 * h})
        g.step(i + 1, c={i: 1.0}, d={i + 1: 0.5 * h})
        g.step(i + 2, c={i: 1.0}, d={i + 2: h})
        g.step(i + 3, c={i: 1.0}, d={i: h / 6, i + 1: h / 3, i + 2: h / 3, i + 3: h / 6})
    return g


def ab2(T: np.ndarray) -> GeneralForm:
    """Adams-Bashforth 2 with variable steps; the first step is Euler."""
    g = GeneralForm(T)
    for i in range(len(T) - 1):
        h = T[i + 1] - T[i]
        if i == 0:
            g.step(i, c={i: 1.0}, d={i: h})
        else:
            r = h / (T[i] - T[i - 1])
            g.step(i, c={i: 1.0}, d={i: h * (1 + 0.5 * r), i - 1: -h * 0.5 * r})
    return g


def _coeffs(schedule: Schedule, T: np.ndarray):
    tt = torch.as_tensor(T, dtype=torch.float64)
    alpha, sigma = schedule.alpha(tt).numpy(), schedule.sigma(tt).numpy()
    beta, gamma = (v.numpy() for v in schedule.x1_coefficients(tt))
    return alpha, sigma, beta, gamma


def _x1_hat(i: int, beta: np.ndarray, gamma: np.ndarray, scale: float) -> tuple[dict, dict]:
    """scale * x1_hat_i = scale (u_i - beta_i x_i) / gamma_i as (c, d) terms."""
    return {i: -scale * beta[i] / gamma[i]}, {i: scale / gamma[i]}


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def ddim(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """DDIM (deterministic): x_{i+1} = (sigma'/sigma) x_i + (alpha' - alpha sigma'/sigma) x1_hat_i."""
    alpha, sigma, beta, gamma = _coeffs(schedule, T)
    g = GeneralForm(T)
    for i in range(len(T) - 1):
        r = sigma[i + 1] / sigma[i]
        c, d = _x1_hat(i, beta, gamma, alpha[i + 1] - alpha[i] * r)
        g.step(i, c=_merge({i: r}, c), d=d)
    return g


def dpmpp_2m(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """DPM-Solver++(2M), data prediction, first-order first and last step (into sigma ~ 0)."""
    alpha, sigma, beta, gamma = _coeffs(schedule, T)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    g = GeneralForm(T)
    m = len(T) - 1
    for i in range(m):
        r = sigma[i + 1] / sigma[i]
        k = alpha[i + 1] - alpha[i] * r  # = alpha_{i+1} (1 - e^{-h_i})
        if i == 0 or i == m - 1:
            c, d = _x1_hat(i, beta, gamma, k)
        else:
            ratio = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            c1, d1 = _x1_hat(i, beta, gamma, k * (1 + 0.5 / ratio))
            c0, d0 = _x1_hat(i - 1, beta, gamma, -k * 0.5 / ratio)
            c, d = _merge(c1, c0), _merge(d1, d0)
        g.step(i, c=_merge({i: r}, c), d=d)
    return g


@dataclass(frozen=True)
class Baseline:
    """A classic solver: its (c, d) builder, NFE per step, default grid, and whether it needs the schedule."""

    builder: Callable[..., GeneralForm]
    nfe_per_step: int
    grid: str
    needs_schedule: bool

    def build(self, T: np.ndarray, schedule: Schedule) -> GeneralForm:
        """The general form of this solver on grid T."""
        return self.builder(T, schedule) if self.needs_schedule else self.builder(T)


#: every classic solver, by the name a solver spec uses
BASELINES = {
    "euler": Baseline(euler, 1, "uniform", False),
    "midpoint": Baseline(midpoint, 2, "uniform", False),
    "heun": Baseline(heun, 2, "uniform", False),
    "rk4": Baseline(rk4, 4, "uniform", False),
    "ab2": Baseline(ab2, 1, "uniform", False),
    "ddim": Baseline(ddim, 1, "uniform", True),
    "dpm++2m": Baseline(dpmpp_2m, 1, "logsnr", True),
}
