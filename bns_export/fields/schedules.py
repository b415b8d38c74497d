"""Gaussian-path schedules alpha_t, sigma_t and their d/dt, in our time (t = 0 noise, t = 1 data).

Each schedule also names the interval [t_lo, t_hi] that solvers integrate by default: the ends
where a prediction type would divide by zero, or where the VP data end is singular, are cut off
(method.md section 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


class Schedule:
    """alpha(t), sigma(t) and their time derivatives; t is a float tensor (any shape)."""

    name: str = "schedule"
    #: default integration interval; adapters may narrow it for their prediction type
    t_lo: float = 0.0
    t_hi: float = 1.0
    #: the default time grid of the model's diffusers pipeline (fields.pipelines.PipelineGrid), None for models
    #: that do not come from a diffusers folder
    pipeline = None

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda = log(alpha / sigma), increasing in t."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def config(self) -> dict:
        """JSON-able description, part of every fingerprint."""
        return {"name": self.name}

    def apply_to_tables(self, fn) -> None:
        """Apply a module's `_apply` function (.to(device), .float(), ...) to tensor tables, if any."""

    # -- conversion coefficients: u = beta * x + gamma * x1_hat (data prediction form) --
    def x1_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(beta, gamma) with u = beta x + gamma x1_hat; used by DDIM and DPM-Solver++ tables."""
        a, s, da, ds = self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)
        return ds / s, da - a * ds / s


class FMOT(Schedule):
    """Conditional OT / rectified flow: alpha = t, sigma = 1 - t."""

    name = "fm-ot"

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)


class _VP(Schedule):
    """Variance preserving: sigma = sqrt(1 - alpha^2); subclasses give alpha and d_alpha."""

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.clamp(1.0 - self.alpha(t) ** 2, min=0.0))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)


@dataclass
class VPLinear(_VP):
    """DDPM continuous-time linear beta schedule (beta0 = 0.1, beta1 = 20), s = 1 - t."""

    beta0: float = 0.1
    beta1: float = 20.0
    name: str = field(default="vp-linear", init=False)
    t_lo: float = 0.0
    t_hi: float = 1.0 - 1e-3

    def _log_alpha(self, t: Tensor) -> Tensor:
        s = 1.0 - t
        return -0.25 * s**2 * (self.beta1 - self.beta0) - 0.5 * s * self.beta0

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_alpha(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        s = 1.0 - t
        return self.alpha(t) * (0.5 * s * (self.beta1 - self.beta0) + 0.5 * self.beta0)

    def config(self) -> dict:
        return {"name": self.name, "beta0": self.beta0, "beta1": self.beta1}


@dataclass
class VPCosine(_VP):
    """Improved-DDPM cosine schedule: alpha_bar(s) = f(s)/f(0), f = cos^2(pi/2 (s+o)/(1+o))."""

    offset: float = 0.008
    name: str = field(default="vp-cosine", init=False)
    # alpha -> 0 at s = 1, where the eps form divides by zero: start a little later
    t_lo: float = 0.02
    t_hi: float = 1.0 - 1e-3

    def _theta(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * ((1.0 - t) + self.offset) / (1.0 + self.offset)

    def alpha(self, t: Tensor) -> Tensor:
        c0 = math.cos(0.5 * math.pi * self.offset / (1.0 + self.offset))
        return torch.cos(self._theta(t)) / c0

    def d_alpha(self, t: Tensor) -> Tensor:
        c0 = math.cos(0.5 * math.pi * self.offset / (1.0 + self.offset))
        return torch.sin(self._theta(t)) * (0.5 * math.pi / (1.0 + self.offset)) / c0

    def config(self) -> dict:
        return {"name": self.name, "offset": self.offset}


class DDPMDiscrete(_VP):
    """Discrete DDPM: alpha_bar_n = prod(1 - beta_i); step index n sits at s = (n + 1) / T.

    log alpha_bar is interpolated linearly in s between the steps, so the network's step index
    is the continuous value s * T - 1.  The interval ends at step 0 (t_hi = 1 - 1/T).  A zero-terminal-SNR
    table (alpha_bar = 0 at the last step: a last beta of 1, Lin et al. 2024, arXiv:2305.08891) interpolates
    alpha itself on its last segment, so alpha(0) = 0 exactly and its derivative stays finite.
    """

    name = "ddpm"

    def __init__(self, betas: Tensor | list[float]) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError("ddpm schedule needs a 1-D beta table of at least 2 steps")
        self.betas = betas
        self.steps = int(betas.numel())
        #: alpha_bar reaches 0 at the last step (zero terminal SNR)
        self.zero_terminal = bool(betas[-1] >= 1.0)
        log_ab = torch.cumsum(torch.log1p(-betas[:-1]), 0)
        # log alpha_bar of the last step; a zero-terminal table's is a finite stand-in (its segment is linear in alpha)
        last = log_ab[-1:] - 1.0 if self.zero_terminal else log_ab[-1:] + torch.log1p(-betas[-1:])
        log_ab = torch.cat([log_ab, last])
        self._log_ab = log_ab
        self._log_ab_on_device: Tensor | None = None
        self.t_lo = 0.0
        self.t_hi = 1.0 - 1.0 / self.steps

    @classmethod
    def linear(cls, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMDiscrete:
        """The original DDPM linear beta table (scaled to `steps`)."""
        return cls(torch.linspace(beta_start, beta_end, steps, dtype=torch.float64))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> DDPMDiscrete:
        """The schedule of a table of alpha_bar (decreasing, in (0, 1]; the last may be 0)."""
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        previous = torch.cat([ab.new_ones(1), ab[:-1]])
        return cls(1.0 - ab / previous)

    def _interp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        moved = self._log_ab_on_device
        on_device = moved is not None and t.device.type != "cpu" and moved.device == t.device
        la = (moved if on_device else self._log_ab).to(t.device, t.dtype)
        pos = (1.0 - t) * self.steps - 1.0
        # a time on (or, after fp32 rounding, within 1e-3 steps of) a step takes the segment that starts there,
        # so fp32 sampling and fp64 tables agree on d alpha/dt at the steps diffusers' timesteps sit on
        idx = torch.clamp(torch.floor(pos.detach() + 1e-3), 0, self.steps - 2).long()
        frac = pos - idx.to(t.dtype)
        flat = idx.reshape(-1)  # index_select, not la[idx]: no data-dependent shape for torch.export to guard
        lo = la.index_select(0, flat).reshape(idx.shape)
        hi = la.index_select(0, flat + 1).reshape(idx.shape)
        return lo + frac * (hi - lo), (hi - lo) * self.steps  # log alpha_bar, d/ds

    def _alpha_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t) and d alpha / dt: log-linear in alpha_bar between steps; on a zero-terminal table's last
        segment linear in alpha, from the last-but-one step's alpha down to 0."""
        log_ab, dlog_ds = self._interp(t)
        alpha = torch.exp(0.5 * log_ab)
        slope = -alpha * 0.5 * dlog_ds  # d/dt = -d/ds
        if self.zero_terminal:
            pos = (1.0 - t) * self.steps - 1.0
            a_prev = torch.exp(0.5 * self._log_ab[-2]).item()
            last = pos > self.steps - 2 - 1e-3  # from the last-but-one step on, as _interp assigns segments
            alpha = torch.where(last, a_prev * (self.steps - 1.0 - pos), alpha)
            slope = torch.where(last, torch.full_like(t, a_prev * self.steps), slope)
        return alpha, slope

    def alpha(self, t: Tensor) -> Tensor:
        return self._alpha_and_slope(t)[0]

    def d_alpha(self, t: Tensor) -> Tensor:
        return self._alpha_and_slope(t)[1]

    def apply_to_tables(self, fn) -> None:
        """Keep a copy of the log alpha_bar table where the field is, so a traced graph holds it on the
        model's device; the float64 CPU master stays for grids and coefficient tables."""
        self._log_ab_on_device = fn(self._log_ab)

    def step_index(self, t: Tensor) -> Tensor:
        """The (fractional) training step index 0..T-1 of time t."""
        return (1.0 - t) * self.steps - 1.0

    def config(self) -> dict:
        # a digest, not the table: fingerprints stay short
        import hashlib

        digest = hashlib.sha256(self.betas.numpy().tobytes()).hexdigest()[:16]
        return {"name": self.name, "steps": self.steps, "betas_sha256": digest}


@dataclass
class EDM(FMOT):
    """EDM / VE: the FM-OT path with sigma_ve = sigma/alpha = (1-t)/t and x_ve = x/alpha.

    Integrated from sigma_ve = sigma_max to sigma_min (the EDM defaults 80 and 0.002).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: str = field(default="edm", init=False)

    def __post_init__(self) -> None:
        self.t_lo = 1.0 / (1.0 + self.sigma_max)
        self.t_hi = 1.0 / (1.0 + self.sigma_min)

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass
class EDMPreconditioned(Schedule):
    """EDM's noise levels sigma_ve = (1 - t) / t seen through its input scaling c_in = 1 / sqrt(sigma_ve^2 + 1)
    (sigma_data 1, Karras et al. 2022, Table 1): the variance-preserving path alpha = t / N, sigma = (1 - t) / N,
    N = sqrt(t^2 + (1 - t)^2).  On it EDM's v-form output c_skip x + c_out F is the VP v-prediction, finite at
    sigma 0, so the interval runs from sigma_max to the data end (t = 1), as the cosine DPM-Solver's pipelines step."""

    sigma_min: float = 0.3
    sigma_max: float = 500.0
    name: str = field(default="edm-preconditioned", init=False)

    def __post_init__(self) -> None:
        self.t_lo = 1.0 / (1.0 + self.sigma_max)
        self.t_hi = 1.0

    @staticmethod
    def _norm(t: Tensor) -> Tensor:
        return torch.sqrt(t * t + (1.0 - t) ** 2)

    def alpha(self, t: Tensor) -> Tensor:
        return t / self._norm(t)

    def sigma(self, t: Tensor) -> Tensor:
        return (1.0 - t) / self._norm(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return (1.0 - t) / self._norm(t) ** 3

    def d_sigma(self, t: Tensor) -> Tensor:
        return -t / self._norm(t) ** 3

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


SCHEDULES = ("fm-ot", "vp-linear", "vp-cosine", "ddpm", "edm")


def make_schedule(name: str, train_steps: int = 1000) -> Schedule:
    """Build a schedule by CLI name."""
    if name == "fm-ot":
        return FMOT()
    if name == "vp-linear":
        return VPLinear()
    if name == "vp-cosine":
        return VPCosine()
    if name == "ddpm":
        return DDPMDiscrete.linear(train_steps)
    if name == "edm":
        return EDM()
    from ..errors import BNSError

    raise BNSError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def schedule_to_dict(schedule: Schedule) -> dict:
    """A JSON-able description from which `schedule_from_dict` rebuilds the same schedule (DDPM: its betas)."""
    if isinstance(schedule, DDPMDiscrete):
        return {"name": "ddpm", "betas": schedule.betas.tolist()}
    return schedule.config()


def schedule_from_dict(d: dict) -> Schedule:
    """Inverse of `schedule_to_dict`."""
    from ..errors import BNSError

    name = d.get("name") if isinstance(d, dict) else None
    params = {k: v for k, v in d.items() if k != "name"} if isinstance(d, dict) else {}
    try:
        if name == "ddpm":
            return DDPMDiscrete(params["betas"])
        cls = {
            "fm-ot": FMOT,
            "vp-linear": VPLinear,
            "vp-cosine": VPCosine,
            "edm": EDM,
            "edm-preconditioned": EDMPreconditioned,
        }[name]
        return cls(**params)
    except (KeyError, TypeError, ValueError) as e:
        raise BNSError(f"bad schedule description {d!r}: {e}") from None
