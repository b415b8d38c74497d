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


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def ddim(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """DDIM (deterministic), Song et al. 2021: each step is `Path.ddim`, the first-order data-form step."""
    p, g = Path(schedule, T), GeneralForm(T)
    for i in range(len(T) - 1):
        x = p.ddim(i)
        g.step(i, c=x.cx, d=x.cu)
    return g


def dpmpp_2m(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022; diffusers' DPMSolverMultistepScheduler, solver_order=2):
    first order at the first step; under 15 steps, and into sigma = 0, first order at the last step too."""
    p, g, m = Path(schedule, T), GeneralForm(T), len(T) - 1
    for i in range(m):
        x = p.ddim(i)
        if p.order(i, _low_order_end(m, i, min(2, i + 1))) == 2:
            h = p.lam[i + 1] - p.lam[i]
            r0 = (p.lam[i] - p.lam[i - 1]) / h
            x = x - (0.5 * p.alpha[i + 1] * np.expm1(-h) / r0) * (p.data(i) - p.data(i - 1))
        g.step(i, c=x.cx, d=x.cu)
    return g


class Lin:
    """A linear combination sum_k cx[k] x_k + cu[k] u_k of evaluation states and velocities.

    Multistep solvers keep states that are never evaluated (UniPC's corrected sample, DEIS's
    data-space sums); as Lin values they stay linear in the evaluations, so every update is
    still one general-form step.
    """

    def __init__(self, cx: dict | None = None, cu: dict | None = None) -> None:
        self.cx, self.cu = dict(cx or {}), dict(cu or {})

    def __add__(self, other: Lin) -> Lin:
        return Lin(_merge(self.cx, other.cx), _merge(self.cu, other.cu))

    def __sub__(self, other: Lin) -> Lin:
        return self + other * -1.0

    def __mul__(self, s: float) -> Lin:
        return Lin({k: v * s for k, v in self.cx.items()}, {k: v * s for k, v in self.cu.items()})

    __rmul__ = __mul__


class Path:
    """The schedule at grid T: alpha, sigma, log-SNR, and the data / noise predictions as Lin values."""

    def __init__(self, schedule: Schedule, T: np.ndarray) -> None:
        self.alpha, self.sigma, self.beta, self.gamma = _coeffs(schedule, T)
        with np.errstate(divide="ignore"):
            self.lam = np.log(self.alpha) - np.log(self.sigma)
        #: 1 when the grid starts at pure noise (alpha = 0, log-SNR -inf), whose network output no
        #: multistep formula may reuse: its log-SNR distances are infinite
        self.first = int(self.alpha[0] == 0.0)

    def order(self, i: int, wanted: int) -> int:
        """The order step i can take: at most the finite-log-SNR history it has, and 1 into or out of an
        infinite log-SNR (pure noise at the start, sigma = 0 at the end), where only DDIM's limit is finite."""
        if i < self.first or self.sigma[i + 1] == 0.0:
            return 1
        return max(1, min(wanted, i + 1 - self.first))

    def ddim(self, i: int) -> Lin:
        """The first-order step in data form, x_{i+1} = (sigma'/sigma) x_i + (alpha' - alpha sigma'/sigma) x1_hat_i,
        finite at both infinite-log-SNR ends (DPM-Solver++, UniPC, DEIS and iPNDM all reduce to it at order 1)."""
        r = self.sigma[i + 1] / self.sigma[i]
        return r * self.x(i) + (self.alpha[i + 1] - self.alpha[i] * r) * self.data(i)

    def x(self, i: int) -> Lin:
        return Lin({i: 1.0})

    def data(self, i: int) -> Lin:
        """x1_hat_i = (u_i - beta_i x_i) / gamma_i."""
        return Lin({i: -self.beta[i] / self.gamma[i]}, {i: 1.0 / self.gamma[i]})

    def eps(self, i: int) -> Lin:
        """eps_hat_i = (x_i - alpha_i x1_hat_i) / sigma_i."""
        return (self.x(i) - self.alpha[i] * self.data(i)) * (1.0 / self.sigma[i])


def _low_order_end(m: int, i: int, order: int) -> int:
    """diffusers' lower_order_final: under 15 steps, first order at the last step, second at the one before."""
    if m < 15 and i == m - 1:
        return 1
    if m < 15 and i == m - 2:
        return min(order, 2)
    return order


def dpmpp_3m(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """DPM-Solver++(3M), data prediction (Lu et al. 2022, Alg. 2 at order 3; diffusers'
    DPMSolverMultistepScheduler(solver_order=3)): orders 1, 2, then 3; under 15 steps order 2 at the
    second-to-last step and 1 at the last (lower_order_final)."""
    p, g, m = Path(schedule, T), GeneralForm(T), len(T) - 1
    for i in range(m):
        order = p.order(i, _low_order_end(m, i, min(3, i + 1)))
        h = p.lam[i + 1] - p.lam[i]
        at, em = p.alpha[i + 1], np.expm1(-h)
        x = p.ddim(i)
        if order >= 2:
            r0 = (p.lam[i] - p.lam[i - 1]) / h
            d1_0 = (p.data(i) - p.data(i - 1)) * (1.0 / r0)
            if order == 2:
                x = x - (0.5 * at * em) * d1_0
            else:
                r1 = (p.lam[i - 1] - p.lam[i - 2]) / h
                d1_1 = (p.data(i - 1) - p.data(i - 2)) * (1.0 / r1)
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1))
                x = x + (at * (em / h + 1.0)) * d1 - (at * ((em + h) / h**2 - 0.5)) * d2
        g.step(i, c=x.cx, d=x.cu)
    return g


def _unipc_coefficients(rks: list[float], hh: float, variant: str, order: int) -> tuple[np.ndarray, float, float]:
    """UniPC's rho vector (predictor: order-1 entries; corrector: order entries), B(h) and h phi_1(h)."""
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else np.expm1(hh)
    r = np.array([*rks, 1.0])
    rows, rhs, fact = [], [], 1
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        rhs.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return np.array(rows), np.array(rhs), b_h, h_phi_1


def unipc(T: np.ndarray, schedule: Schedule, variant: str = "bh2", solver_order: int = 2) -> GeneralForm:
    """UniPC multistep, data prediction (Zhao et al. 2023; diffusers' UniPCMultistepScheduler, solver_order=2):
    the UniP predictor of order min(2, warm-up, steps left), and the UniC corrector applied to each new
    sample with the network output taken there, so NFE stays n; the last sample is not corrected."""
    p, g, m = Path(schedule, T), GeneralForm(T), len(T) - 1
    xc = p.x(0)  # the (corrected) sample the predictor steps from
    prev_order = 0
    for k in range(m):
        if k > p.first:  # UniC: correct x_k with D_k, using the step k-1 -> k of order prev_order
            h = p.lam[k] - p.lam[k - 1]
            rks = [(p.lam[k - 1 - i] - p.lam[k - 1]) / h for i in range(1, prev_order)]
            big_r, rhs, b_h, h_phi_1 = _unipc_coefficients(rks, -h, variant, prev_order)
            rhos = np.array([0.5]) if prev_order == 1 else np.linalg.solve(big_r, rhs)
            m0 = p.data(k - 1)
            corr = Lin()
            for i in range(1, prev_order):
                corr = corr + rhos[i - 1] * ((p.data(k - 1 - i) - m0) * (1.0 / rks[i - 1]))
            corr = corr + rhos[-1] * (p.data(k) - m0)
            xc = (p.sigma[k] / p.sigma[k - 1]) * xc - (p.alpha[k] * h_phi_1) * m0 - (p.alpha[k] * b_h) * corr
        order = p.order(k, min(solver_order, m - k, k + 1))
        if order == 1:
            r = p.sigma[k + 1] / p.sigma[k]  # DDIM from the corrected sample
            x = r * xc + (p.alpha[k + 1] - p.alpha[k] * r) * p.data(k)
        else:
            h = p.lam[k + 1] - p.lam[k]
            rks = [(p.lam[k - i] - p.lam[k]) / h for i in range(1, order)]
            big_r, rhs, b_h, h_phi_1 = _unipc_coefficients(rks, -h, variant, order)
            m0 = p.data(k)
            x = (p.sigma[k + 1] / p.sigma[k]) * xc - (p.alpha[k + 1] * h_phi_1) * m0
            rhos = np.array([0.5]) if order == 2 else np.linalg.solve(big_r[:-1, :-1], rhs[:-1])
            pred = Lin()
            for i in range(1, order):
                pred = pred + rhos[i - 1] * ((p.data(k - i) - m0) * (1.0 / rks[i - 1]))
            x = x - (p.alpha[k + 1] * b_h) * pred
        g.step(k, c=x.cx, d=x.cu)
        prev_order = order
    return g


def unipc_bh1(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """UniPC with B(h) = h (bh1), otherwise as `unipc` (bh2)."""
    return unipc(T, schedule, "bh1")


def _deis_ind2(t: float, b: float, c: float) -> float:
    """Integral of the log-rho Lagrange basis (log t - log c) / (log b - log c) dt (DEIS, Zhang & Chen 2023)."""
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _deis_ind3(t: float, b: float, c: float, d: float) -> float:
    """Integral of (log t - log c)(log t - log d) / ((log b - log c)(log b - log d)) dt."""
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return num / ((np.log(b) - lc) * (np.log(b) - ld))


def deis(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """DEIS tAB in log-rho, order 3 (Zhang & Chen 2023; diffusers' DEISMultistepScheduler(solver_order=3)):
    eps-space Adams-Bashforth on rho = sigma/alpha, orders 1, 2, then 3, lower order at the end under 15 steps."""
    p, g, m = Path(schedule, T), GeneralForm(T), len(T) - 1
    with np.errstate(divide="ignore"):
        rho = p.sigma / p.alpha  # inf at pure noise, never used there (order 1 = DDIM)
    for i in range(m):
        order = p.order(i, _low_order_end(m, i, min(3, i + 1)))
        at, rt, r0 = p.alpha[i + 1], rho[i + 1], rho[i]
        if order == 1:
            x = p.ddim(i)  # = (alpha'/alpha) x - sigma' (e^h - 1) eps, diffusers' first-order DEIS
        elif order == 2:
            r1 = rho[i - 1]
            c1 = _deis_ind2(rt, r0, r1) - _deis_ind2(r0, r0, r1)
            c2 = _deis_ind2(rt, r1, r0) - _deis_ind2(r0, r1, r0)
            x = at * ((1.0 / p.alpha[i]) * p.x(i) + c1 * p.eps(i) + c2 * p.eps(i - 1))
        else:
            r1, r2 = rho[i - 1], rho[i - 2]
            c1 = _deis_ind3(rt, r0, r1, r2) - _deis_ind3(r0, r0, r1, r2)
            c2 = _deis_ind3(rt, r1, r2, r0) - _deis_ind3(r0, r1, r2, r0)
            c3 = _deis_ind3(rt, r2, r0, r1) - _deis_ind3(r0, r2, r0, r1)
            x = at * ((1.0 / p.alpha[i]) * p.x(i) + c1 * p.eps(i) + c2 * p.eps(i - 1) + c3 * p.eps(i - 2))
        g.step(i, c=x.cx, d=x.cu)
    return g


#: iPNDM's Adams-Bashforth weights on the newest eps first, by order (k-diffusion's sample_ipndm)
IPNDM_WEIGHTS = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def ipndm(T: np.ndarray, schedule: Schedule) -> GeneralForm:
    """Improved PNDM (Zhang & Chen 2023; k-diffusion's sample_ipndm): fixed Adams-Bashforth weights of
    order min(4, i + 1) on eps, stepping the VE variable x/alpha in sigma/alpha."""
    p, g, m = Path(schedule, T), GeneralForm(T), len(T) - 1
    with np.errstate(divide="ignore"):
        sve = p.sigma / p.alpha
    for i in range(m):
        if i < p.first:  # from pure noise the VE step is infinite; its limit is DDIM
            g.step(i, c=p.ddim(i).cx, d=p.ddim(i).cu)
            continue
        w = IPNDM_WEIGHTS[min(4, i + 1)]
        d = Lin()
        for j, wj in enumerate(w):
            d = d + wj * p.eps(i - j)
        x = (p.alpha[i + 1] / p.alpha[i]) * p.x(i) + (p.alpha[i + 1] * (sve[i + 1] - sve[i])) * d
        g.step(i, c=x.cx, d=x.cu)
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
    "dpm++3m": Baseline(dpmpp_3m, 1, "logsnr", True),
    "unipc": Baseline(unipc, 1, "logsnr", True),
    "unipc-bh1": Baseline(unipc_bh1, 1, "logsnr", True),
    "deis": Baseline(deis, 1, "logsnr", True),
    "ipndm": Baseline(ipndm, 1, "karras", True),
}
