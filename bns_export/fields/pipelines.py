"""The default time grid of a diffusers pipeline, as data: what its scheduler's `set_timesteps(n)` computes from
the folder's config (and from what the pipeline passes it: Flux's sigmas, a resolution-dependent shift), in our
time t (0 noise, 1 data).  `loaders.schedulers` builds one record per folder; `solvers.grids` asks it for the
`:pipeline` grid.  Each record cites the diffusers code it mirrors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BNSError
from .schedules import DDPMDiscrete, Schedule


class PipelineGrid(ABC):
    """The m + 1 increasing times of a pipeline's m steps: where it calls the network, then where it ends."""

    #: the folder's scheduler class, for messages
    scheduler: str

    @abstractmethod
    def times(self, schedule: Schedule, m: int) -> np.ndarray:
        """The grid for m steps (m + 1 times, increasing)."""


def shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """SD3's time shift sigma' = shift sigma / (1 + (shift - 1) sigma) (Esser et al. 2024, eq. 23); with dynamic
    shifting shift = exp(mu) (exponential type) or mu (linear type), which is the same map."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class FlowGrid(PipelineGrid):
    """A flow-matching pipeline's sigmas (FlowMatchEulerDiscreteScheduler.set_timesteps, or DPM-Solver / UniPC
    with use_flow_sigmas), then sigma = 0; t = 1 - sigma.

    start: "scheduler", the scheduler's own linspace(sigma_max, sigma_min, n) before shifting (SD3, AuraFlow);
    "one-over-n", the pipeline passes linspace(1, 1/n, n) (Flux, LTX-Video, Lumina 2); "uniform", it passes
    linspace(1, 0, n + 1)[:-1] (HunyuanVideo); "dpm-flow-sigmas", DPM-Solver's use_flow_sigmas
    (1 - linspace(1, 1/T, n + 1), shifted, flipped, the last dropped: Sana); "unipc-flow-sigmas", UniPC's
    (linspace(1, 1/T, n + 1)[:-1], shifted: Wan; UniPC then lowers a first sigma of 1 by 1e-6 against a log of
    0, which the grid leaves at 1, the ODE's start).
    """

    scheduler: str
    shift: float = 1.0
    start: str = "scheduler"
    #: the scheduler's sigma_min before set_timesteps shifts again (shift(1/T), or 1/T with dynamic shifting)
    sigma_min: float = 1e-3
    #: LTX-Video's shift_terminal: the shifted sigmas stretched so the last one is this
    shift_terminal: float | None = None
    train_steps: int = 1000

    def sigmas(self, m: int) -> np.ndarray:
        """The m sigmas the pipeline calls the network at, decreasing."""
        if self.start == "dpm-flow-sigmas":
            s = 1.0 - np.linspace(1, 1 / self.train_steps, m + 1)
            return np.flip(shifted(s, self.shift))[:-1].copy()
        if self.start == "unipc-flow-sigmas":
            s = np.linspace(1, 1 / self.train_steps, m + 1)[:-1]
        elif self.start == "scheduler":
            s = np.linspace(self.train_steps * 1.0, self.train_steps * self.sigma_min, m) / self.train_steps
        elif self.start == "one-over-n":
            s = np.linspace(1.0, 1.0 / m, m)
        elif self.start == "uniform":
            s = np.linspace(1.0, 0.0, m + 1)[:-1]
        else:
            raise BNSError(f"unknown flow grid start {self.start!r}")
        s = shifted(s, self.shift)
        if self.shift_terminal:
            one_minus = 1.0 - s
            s = 1.0 - one_minus / (one_minus[-1] / (1.0 - self.shift_terminal))
        return s

    def times(self, schedule: Schedule, m: int) -> np.ndarray:
        return 1.0 - np.append(self.sigmas(m), 0.0)


@dataclass(frozen=True)
class DiscreteGrid(PipelineGrid):
    """A DDPM-family pipeline's timesteps (training-step indices k, t = 1 - (k + 1) / T), then the schedule's end
    (step 0).  style "n": DDIM, DDPM, PNDM (its distinct PLMS steps), CogVideoX's and the Euler schedulers take
    n indices; "n+1": the multistep solvers (DPM-Solver++, UniPC, DEIS) take n of n + 1.  Euler's linspace
    indices stay fractional (`rounded` False); `sigmas` "karras" / "exponential" respace the noise levels
    (Karras et al. 2022, eq. 5) and map them back to (fractional) indices by log-sigma interpolation."""

    scheduler: str
    spacing: str = "linspace"
    offset: int = 0
    style: str = "n"
    rounded: bool = True
    sigmas: str = "default"
    #: DPM-Solver's lambda_min_clipped cuts the last timesteps (None: not set)
    lambda_min_clipped: float | None = None

    def timesteps(self, schedule: DDPMDiscrete, m: int) -> np.ndarray:
        """The m training-step indices, decreasing, as the scheduler's set_timesteps computes them."""
        steps, multistep = schedule.steps, self.style == "n+1"
        last = steps if self.lambda_min_clipped is None else self._last_timestep(schedule)
        if self.spacing == "linspace":
            k = np.linspace(0, last - 1, m + 1)[::-1][:-1] if multistep else np.linspace(0, steps - 1, m)[::-1]
            k = k.round() if (self.rounded or multistep) else k
        elif self.spacing == "leading":
            count = m + 1 if multistep else m
            k = (np.arange(0, count) * ((last if multistep else steps) // count)).round()[::-1]
            k = (k[:-1] if multistep else k) + self.offset
        elif self.spacing == "trailing":
            k = np.arange(last if multistep else steps, 0, -steps / m).round() - 1
        else:
            raise BNSError(f"timestep_spacing {self.spacing!r} is not one of linspace, leading, trailing")
        if self.sigmas != "default":
            k = self._respaced(schedule, k, m)
        return k.astype(np.float64)

    def _last_timestep(self, schedule: DDPMDiscrete) -> int:
        """DPM-Solver's last usable timestep: the steps whose log-SNR is below lambda_min_clipped are cut."""
        lam = schedule.log_snr(torch.as_tensor(self._t(schedule, np.arange(schedule.steps)))).numpy()
        clipped = int(np.searchsorted(np.flip(lam), self.lambda_min_clipped))
        return schedule.steps - clipped

    def _respaced(self, schedule: DDPMDiscrete, k: np.ndarray, m: int) -> np.ndarray:
        """Karras or exponential noise levels between the scheduler's ends, as fractional (multistep: integer)
        indices (diffusers' _convert_to_karras / _convert_to_exponential and _sigma_to_t)."""
        all_t = torch.as_tensor(self._t(schedule, np.arange(schedule.steps)))
        a, s = schedule.alpha(all_t).numpy(), schedule.sigma(all_t).numpy()
        with np.errstate(divide="ignore"):
            table = s / a  # sigma_ve per training step, increasing with the index
        if self.style == "n+1":
            hi, lo = table[-1], table[0]
        else:  # Euler respaces the sigmas it interpolated at its own timesteps
            at = np.interp(k, np.arange(schedule.steps), table)
            hi, lo = at[0], at[-1]
        if not np.isfinite(hi):
            raise BNSError(f"{self.scheduler}: Karras / exponential sigmas need a finite largest noise level")
        ramp = np.linspace(0, 1, m)
        if self.sigmas == "karras":
            rho = 7.0
            sig = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        else:
            sig = np.exp(np.linspace(np.log(hi), np.log(lo), m))
        log_table = np.log(table)
        pos = np.interp(np.log(np.maximum(sig, 1e-10)), log_table, np.arange(schedule.steps))
        if self.style != "n+1":
            return pos
        return pos.round() if self.sigmas == "karras" else np.floor(pos)  # DPM-Solver: Karras rounded, else cast

    @staticmethod
    def _t(schedule: DDPMDiscrete, k: np.ndarray) -> np.ndarray:
        return 1.0 - (np.asarray(k, dtype=np.float64) + 1.0) / schedule.steps

    def times(self, schedule: Schedule, m: int) -> np.ndarray:
        if not isinstance(schedule, DDPMDiscrete):
            raise BNSError(f"{self.scheduler}'s grid needs a discrete ddpm schedule, not {schedule.name}")
        t = self._t(schedule, self.timesteps(schedule, m))
        if t[-1] >= schedule.t_hi - 1e-12 or np.any(np.diff(t) <= 0):
            raise BNSError(
                f"{self.scheduler} with timestep_spacing {self.spacing} calls the network at training step 0 at "
                f"{m} steps, where the ODE bns-export integrates ends: its grid has no final step there; use "
                ":diffusers or another grid"
            )
        return np.append(t, schedule.t_hi)


@dataclass(frozen=True)
class EDMGrid(PipelineGrid):
    """CosineDPMSolverMultistepScheduler.set_timesteps: n noise levels from sigma_max to sigma_min, exponential
    (log-uniform, k-diffusion's get_sigmas_exponential) or Karras (Karras et al. 2022, eq. 5, with rho), then
    sigma 0; t = 1 / (1 + sigma) on the EDMPreconditioned path."""

    scheduler: str
    sigma_min: float
    sigma_max: float
    spacing: str = "exponential"
    rho: float = 7.0

    def sigmas(self, m: int) -> np.ndarray:
        """The m noise levels the pipeline calls the network at, decreasing."""
        ramp = np.linspace(0.0, 1.0, m)
        if self.spacing == "karras":
            lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
            return (hi + ramp * (lo - hi)) ** self.rho
        return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), m))[::-1].copy()

    def times(self, schedule: Schedule, m: int) -> np.ndarray:
        return np.append(1.0 / (1.0 + self.sigmas(m)), 1.0)
