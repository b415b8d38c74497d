"""A diffusers scheduler that runs a BNS (or any NS) table: `BNSScheduler`, a drop-in for pipelines.

x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u_j with u_j our velocity from the network output at step j,
converted by the same adapters the rest of the package uses; one network call per step.  The
table, the model's schedule, prediction type and time input live in scheduler_config.json, so
save_pretrained / from_pretrained work.  Needs the `diffusers` package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .errors import BNSError
from .fields import GuidedField, NetworkField
from .fields.adapters import network_input, network_time, to_velocity
from .fields.schedules import schedule_from_dict, schedule_to_dict
from .loaders.diffusers import DIFFUSERS_PREDICTIONS as PREDICTIONS  # diffusers' prediction_type names -> ours
from .solvers.table import NSSolver


@dataclass
class BNSSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor


class BNSScheduler(SchedulerMixin, ConfigMixin):
    """Runs an n-step NS table: set_timesteps(n) gives its n times in the network's units; step() does one update."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        solver: dict | None = None,
        schedule: dict | None = None,
        prediction_type: str = "epsilon",
        time_input: str = "index",
        t_lo: float = 0.0,
    ) -> None:
        if solver is None or schedule is None:
            raise BNSError("BNSScheduler needs a solver table and the model's schedule (use BNSScheduler.from_solver)")
        if prediction_type not in PREDICTIONS:
            raise BNSError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTIONS)}")
        self.solver = NSSolver.from_json(solver, source="scheduler config")
        self.schedule = schedule_from_dict(schedule)
        self.prediction = PREDICTIONS[prediction_type]
        t = torch.as_tensor(self.solver.t, dtype=torch.float64)
        self.init_noise_sigma = float(self.schedule.sigma(torch.tensor(float(self.solver.t[0]), dtype=torch.float64)))
        self.timesteps = network_time(self.schedule, time_input, t).float()
        self.num_inference_steps = self.solver.nfe
        self._reset()

    @classmethod
    def from_solver(cls, solver: NSSolver | str, field) -> BNSScheduler:
        """The scheduler of a solver file (or table) for a NetworkField (or a guided one): schedule, prediction
        type and time input come from the field."""
        from .solvers.resolve import check_solver_fits

        table = solver if isinstance(solver, NSSolver) else NSSolver.load(solver)
        check_solver_fits(table, field, source=str(solver) if not isinstance(solver, NSSolver) else "solver")
        net_field = field.field if isinstance(field, GuidedField) else field
        if not isinstance(net_field, NetworkField):
            raise BNSError("BNSScheduler needs a network model (its prediction type and time input)")
        prediction = {v: k for k, v in PREDICTIONS.items()}[net_field.prediction]
        return cls(
            solver=table.to_json(),
            schedule=schedule_to_dict(net_field.schedule),
            prediction_type=prediction,
            time_input=net_field.time_input,
            t_lo=float(table.t[0]),
        )

    def _reset(self) -> None:
        self._step = 0
        self._x0: torch.Tensor | None = None
        self._us: list[torch.Tensor] = []

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None, **_):
        """The solver's n times in the network's units; another step count or foreign timesteps/sigmas is an error."""
        if timesteps is not None or sigmas is not None:
            raise BNSError("BNSScheduler runs its own times: it takes no timesteps or sigmas")
        n = self.solver.nfe
        if num_inference_steps is not None and num_inference_steps != n:
            raise BNSError(f"this BNS solver takes exactly {n} steps, not {num_inference_steps}")
        t = torch.as_tensor(self.solver.t, dtype=torch.float64)
        self.timesteps = network_time(self.schedule, self.config.time_input, t).float().to(device)
        self.num_inference_steps = n
        self._reset()

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """What the network sees at the current step: the sample, or sample / alpha for EDM-style networks."""
        t = torch.tensor(float(self.solver.t[min(self._step, self.solver.nfe - 1)]), dtype=sample.dtype)
        return network_input(self.schedule, self.config.time_input, sample, t.to(sample.device))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **_):
        """x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u_j, u_i converted from `model_output` at the solver's t_i."""
        i = self._step
        if i >= self.solver.nfe:
            raise BNSError(f"this BNS solver has {self.solver.nfe} steps; call set_timesteps() to start again")
        if i == 0:
            self._x0 = sample
        t = torch.tensor(float(self.solver.t[i]), dtype=sample.dtype, device=sample.device)
        self._us.append(to_velocity(self.schedule, self.prediction, sample, t, model_output.to(sample.dtype)))
        x = float(self.solver.a[i]) * self._x0
        for j in range(i + 1):
            x = x + float(self.solver.b[i, j]) * self._us[j]
        self._step += 1
        if not return_dict:
            return (x,)
        return BNSSchedulerOutput(prev_sample=x)

    def __len__(self) -> int:
        return self.solver.nfe
