"""Every classic solver as an exact NS table, each a short function over one time grid.

Each builder takes the grid T_0..T_m and returns the general form (see general.py); `baseline`
picks the grid and converts.  NFE per step: Euler/AB2/DDIM/DPM-Solver++(2M) 1, midpoint/Heun 2,
RK4 4.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BNSError
from ..fields.schedules import Schedule
from .general import GeneralForm, scale_time
from .grids import GRIDS, make_grid
from .table import NSSolver


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


# name -> (builder, NFE per step, default grid, needs the schedule)
BASELINES = {
    "euler": (euler, 1, "uniform", False),
    "midpoint": (midpoint, 2, "uniform", False),
    "heun": (heun, 2, "uniform", False),
    "rk4": (rk4, 4, "uniform", False),
    "ab2": (ab2, 1, "uniform", False),
    "ddim": (ddim, 1, "uniform", True),
    "dpm++2m": (dpmpp_2m, 1, "logsnr", True),
}


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, grid = spec.partition(":")
    if name not in BASELINES:
        raise BNSError(f"unknown solver {spec!r}: not a file and not one of {', '.join(BASELINES)}")
    if grid and grid not in GRIDS:
        raise BNSError(f"unknown time grid {grid!r} in {spec!r}; choose one of {', '.join(GRIDS)}")
    return name, grid or None


def baseline(
    spec: str, nfe: int, schedule: Schedule, t_lo: float, t_hi: float, precondition: float | None = None
) -> NSSolver:
    """The NS table of a classic solver at `nfe` evaluations, e.g. "rk4", "heun:karras".

    precondition (sigma_0): run the solver on the scale-time transformed path whose source has
    std sigma_0 (method.md section 3); exact for FM-OT fields, a valid NS solver for any field.
    """
    name, grid = parse_spec(spec)
    builder, per_step, default_grid, needs_schedule = BASELINES[name]
    grid = grid or default_grid
    if nfe < per_step or nfe % per_step:
        raise BNSError(f"{name} uses {per_step} NFE per step: NFE {nfe} is not a multiple of {per_step}")
    m = nfe // per_step

    def build(T: np.ndarray) -> GeneralForm:
        return builder(T, schedule) if needs_schedule else builder(T)

    meta = {"base_solver": spec if ":" in spec else f"{name}:{grid}"}
    if precondition is None:
        return build(make_grid(grid, m, schedule, t_lo, t_hi)).to_ns(name=spec, **meta)
    if needs_schedule:
        raise BNSError(f"preconditioning applies to the time-stepping solvers, not {name}")
    s0 = float(precondition)
    if not s0 > 0:
        raise BNSError(f"preconditioning sigma_0 must be positive, got {precondition}")
    span = t_hi - t_lo
    # FM-OT: xbar_r = (1 - r) sigma_0 z + r x1 => t_r = r / (r + (1 - r) sigma_0), s_r = r + (1 - r) sigma_0;
    # the base solver steps uniformly in r
    g = scale_time(
        build,
        make_grid("uniform", m, schedule, 0.0, 1.0),
        t_of_r=lambda r: t_lo + span * r / (r + (1 - r) * s0),
        s_of_r=lambda r: r + (1 - r) * s0,
        dt_dr=lambda r: span * s0 / (r + (1 - r) * s0) ** 2,
        ds_dr=lambda r: np.full_like(r, 1 - s0),
    )
    meta["base_solver"] = f"{name}:uniform"
    meta["precondition_sigma0"] = s0
    return g.to_ns(name=f"{name}@sigma0={s0:g}", **meta)
