"""A diffusers scheduler that runs a BNS (or any NS) table: `BNSScheduler`, a drop-in for pipelines.

x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u_j with u_j our velocity from the network output at step j,
converted by the same adapters the rest of the package uses; one network call per step.  The
table, the model's schedule, prediction type and time input live in scheduler_config.json, so
save_pretrained / from_pretrained work; the schedule is also stored under diffusers' own keys
(num_train_timesteps, trained_betas, prediction_type, timestep_spacing, steps_offset, shift), so
`OtherScheduler.from_config(pipe.scheduler.config)` and `-m diffusers:` read the model's schedule
back.  step() computes in fp32 whatever the model output's dtype and returns the sample's dtype, as
diffusers' schedulers do.  Needs the `diffusers` package.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .contract import traced_guidance
from .errors import BNSError
from .fields import GuidedField, NetworkField
from .fields.adapters import network_input, network_time, to_velocity
from .fields.pipelines import DiscreteGrid, FlowGrid
from .fields.schedules import FMOT, DDPMDiscrete, schedule_from_dict, schedule_to_dict
from .fields.segment import TOLERANCE, Segment
from .loaders.schedulers import DIFFUSERS_PREDICTIONS as PREDICTIONS  # diffusers' prediction_type names -> ours
from .solvers.table import NSSolver, SolverFamily, Table, load_solver, solver_from_json

#: how close pipeline-given sigmas must be to the table's own to be accepted (relative)
SIGMA_TOLERANCE = 1e-4


@dataclass
class BNSSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor


class BNSScheduler(SchedulerMixin, ConfigMixin):
    """Runs an n-step NS table: set_timesteps(n) gives its n times in the network's units; step() does one update."""

    config_name = "scheduler_config.json"
    order = 1
    #: schedulers that can be built from this one's config (they read the diffusers keys it stores)
    _compatibles = [
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "EulerDiscreteScheduler",
        "FlowMatchEulerDiscreteScheduler",
    ]

    @register_to_config
    def __init__(
        self,
        solver: dict | None = None,
        schedule: dict | None = None,
        prediction_type: str = "epsilon",
        time_input: str = "index",
        t_lo: float = 0.0,
        num_train_timesteps: int = 1000,
        trained_betas: list | None = None,
        beta_schedule: str = "linear",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        shift: float = 1.0,
        guidance: float | None = None,
        original: dict | None = None,
        segments: list | None = None,
        model_interval: list | None = None,
    ) -> None:
        if solver is None or schedule is None:
            raise BNSError("BNSScheduler needs a solver table and the model's schedule (use BNSScheduler.from_solver)")
        if prediction_type not in PREDICTIONS:
            raise BNSError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTIONS)}")
        table = solver_from_json(solver, source="scheduler config")
        #: every table it holds: the first, and the tables of other segments (fields.segment) it picks per call
        self.tables = [table] + [solver_from_json(t, source="scheduler config") for t in segments or []]
        #: the model's whole interval (older configs: the first table's)
        self.interval = tuple(model_interval) if model_interval else (float(table.t[0]), float(table.t_end))
        self.schedule = schedule_from_dict(schedule)
        self.prediction = PREDICTIONS[prediction_type]
        self._guidance: float | None = None
        self._time_input = time_input
        self._layout = (0, 0)  # placeholder steps before and after the table's in `timesteps` (see set_timesteps)
        self._select(table)
        # the folder's own scheduler settings beside ours, so another scheduler built from this config is the one
        # the folder had (DDIM's clip_sample and set_alpha_to_one, PNDM's skip_prk_steps, ...)
        own = set(inspect.signature(type(self).__init__).parameters)
        self.register_to_config(**{k: v for k, v in (original or {}).items() if k not in own and not k.startswith("_")})
        self._begin_index: int | None = None
        self._pipe = None  # the pipeline it was made for (a weak reference), whose guidance_scale it checks
        self._warned = False
        self._reset()

    def _select(self, table: Table) -> None:
        """Run `table` (a guidance family: at its lowest knot until set_timesteps takes the call's scale)."""
        #: a guidance family: set_timesteps takes its table at the pipeline's guidance_scale (or set_guidance's)
        self.family = table if isinstance(table, SolverFamily) else None
        self._use(table if self.family is None else table.at(traced_guidance(table.guidance_range, None)))

    def _use(self, solver: NSSolver) -> None:
        """Run `solver`'s table: its times (fp64), the start's noise level and the network-unit timesteps."""
        self.solver = solver
        self._t = torch.as_tensor(solver.t, dtype=torch.float64)  # our times, kept in fp64
        self.init_noise_sigma = float(self.schedule.sigma(self._t[0]))
        self.timesteps = network_time(self.schedule, self._time_input, self._t).float()
        self.num_inference_steps = solver.nfe

    def set_guidance(self, guidance: float) -> None:
        """A family's scale for the next set_timesteps when no pipeline gives one (a pipeline's guidance_scale
        wins)."""
        if self.family is None:
            raise BNSError("this BNSScheduler runs one table: its guidance was fixed when it was distilled")
        self._guidance = float(guidance)

    def __repr__(self) -> str:
        return (
            f"BNSScheduler({self.solver.nfe} steps, {self.solver.name}, {self.schedule.name}, "
            f"prediction {self.config.prediction_type}, guidance {self.config.guidance})"
        )

    @classmethod
    def from_solver(cls, solver: Table | str, model) -> BNSScheduler:
        """The scheduler of a solver file (or table) for its model, given as a NetworkField (or a guided
        one), a diffusers pipeline (its unet or transformer and its scheduler's config), or a diffusers
        folder.  The solver must have been distilled for that network and schedule (the weights, not the
        folder's name or the prompt set); with a pipeline, the guidance is the pipeline call's, and a
        call at another scale than the table's gets one warning.  A guidance family takes its table at the
        pipeline call's guidance_scale (or set_guidance's, or a guided field's) when set_timesteps runs."""
        from .solvers.resolve import check_solver_fits

        given = list(solver) if isinstance(solver, (list, tuple)) else [solver]
        if not given:
            raise BNSError("BNSScheduler.from_solver needs at least one solver table")
        tables = [s if isinstance(s, (NSSolver, SolverFamily)) else load_solver(s) for s in given]
        sources = ["solver" if isinstance(s, (NSSolver, SolverFamily)) else str(s) for s in given]
        table = tables[0]
        pipe, given_field, original = None, isinstance(model, (NetworkField, GuidedField)), None
        if isinstance(model, (str, os.PathLike)):
            original, model = folder_field(model, table)
        elif not given_field:
            pipe, model = model, pipeline_field(model, table)
            original = dict(pipe.scheduler.config)
        spans = set()
        for each, source in zip(tables, sources):  # each on its segment; else the pipeline call's guidance
            span = (round(float(each.t[0]), 9), round(float(each.t_end), 9))
            if span in spans:
                raise BNSError(f"{source}: two tables for the segment [{span[0]:g}, {span[1]:g}]; give one")
            spans.add(span)
            whole = abs(span[0] - model.t_lo) < TOLERANCE and abs(span[1] - model.t_hi) < TOLERANCE
            on = model if whole else Segment(model, *span)
            check_solver_fits(each, on, source=source, check_guidance=given_field)
        net_field = model.field if isinstance(model, GuidedField) else model
        if not isinstance(net_field, NetworkField):
            raise BNSError("BNSScheduler needs a network model (its prediction type and time input)")
        prediction = {v: k for k, v in PREDICTIONS.items()}[net_field.prediction]
        schedule = net_field.schedule
        keys, grid = {}, schedule.pipeline
        if isinstance(schedule, DDPMDiscrete):  # diffusers' own keys, so other schedulers read the same betas
            keys = dict(
                num_train_timesteps=schedule.steps,
                trained_betas=schedule.betas.tolist(),
                beta_schedule="linear",  # unused next to trained_betas; diffusers requires a name
                timestep_spacing=grid.spacing if isinstance(grid, DiscreteGrid) else "linspace",
                steps_offset=grid.offset if isinstance(grid, DiscreteGrid) else 0,
            )
        elif isinstance(schedule, FMOT):
            keys = dict(num_train_timesteps=1000, shift=float(grid.shift if isinstance(grid, FlowGrid) else 1.0))
        guidance = table.meta.get("guidance")
        scheduler = cls(
            solver=table.to_json(),
            schedule=schedule_to_dict(schedule),
            prediction_type=prediction,
            time_input=net_field.time_input,
            t_lo=float(table.t[0]),
            guidance=None if guidance is None else float(guidance),
            original=_settings(original),
            segments=[t.to_json() for t in tables[1:]] or None,
            model_interval=[float(model.t_lo), float(model.t_hi)],
            **keys,
        )
        scheduler._pipe = None if pipe is None else weakref.ref(pipe)
        if scheduler.family is not None and isinstance(model, GuidedField):
            scheduler.set_guidance(model.guidance)
        return scheduler

    def _pipeline_guidance(self) -> float | None:
        pipe = self._pipe() if self._pipe is not None else None
        scale = getattr(pipe, "guidance_scale", None) if pipe is not None else None
        return float(scale) if isinstance(scale, (int, float)) else None

    def _choose_table(self) -> None:
        """A family's table at the pipeline's guidance_scale (else set_guidance's); outside its range, one line."""
        w = self._pipeline_guidance()
        w = self._guidance if w is None else w
        lo, hi = self.family.guidance_range
        if w is None:
            raise BNSError(f"this BNSScheduler holds a guidance family ({lo:g}..{hi:g}): call set_guidance(w) first")
        if not lo <= w <= hi:
            raise BNSError(f"guidance_scale {w:g} is outside the solver family's range {lo:g}..{hi:g}")
        self._use(self.family.at(w))

    def _check_guidance(self) -> None:
        """Once: a pipeline that samples at another guidance scale than the table was distilled at."""
        scale = self._pipeline_guidance()
        table = self.config.guidance
        if self._warned or table is None or scale is None or scale == float(table):
            return
        self._warned = True
        warnings.warn(
            f"BNSScheduler: the pipeline samples at guidance_scale {scale:g}, but this table was distilled at "
            f"{table:g}; its samples are only faithful at {table:g}",
            stacklevel=3,
        )

    def _reset(self) -> None:
        self._step = 0
        self._x0: torch.Tensor | None = None
        self._us: list[torch.Tensor] = []

    # -- the attributes diffusers pipelines read -------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """The step the next step() call takes (None before the first), as diffusers defines it."""
        return None if self._step == 0 and self._begin_index is None else self._step

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Pipelines call this before the loop (Flux, SD3, img2img at its strength's first step); the table's first
        step must be the one they begin at: one line otherwise."""
        begin = self._layout[0]
        if (begin_index or 0) != begin:
            t0 = float(self._t[0])
            need = (
                f"num_inference_steps and strength with int(num_inference_steps * strength) = {self.solver.nfe} "
                f"(this table starts at t = {t0:g}, strength {1 - t0:g})"
                if begin
                else f"strength 1 (this table starts from noise and runs all its {self.solver.nfe} steps)"
            )
            raise BNSError(f"the pipeline begins at step {begin_index} of {len(self.timesteps)}: pass {need}")
        self._begin_index = begin

    @property
    def sigmas(self) -> torch.Tensor:
        """The noise level sigma / alpha at each step and the end, as diffusers' sigmas (0 at the data end)."""
        t = torch.cat([self._t, torch.ones(1, dtype=torch.float64)])
        return self._sigma_ve(t).float()

    def _sigma_ve(self, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        if isinstance(self.schedule, FMOT):  # flow models' sigmas are the path's own: sigma = 1 - t
            return sigma
        return torch.where(alpha > 0, sigma / alpha.clamp_min(1e-30), torch.full_like(t, float("inf")))

    def set_timesteps(
        self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None, mu=None, **_
    ):
        """The solver's n times in the network's units.  Pipelines that pass sigmas or timesteps are accepted when
        they are the table's own (to SIGMA_TOLERANCE), or a flow pipeline's default linspace(1, 1/n, n) (what
        FluxPipeline, LTXPipeline and Lumina2Pipeline pass when the user chose none: the table's grid then);
        anything else is one line.  A family takes its table at the call's guidance first."""
        self._begin_index = None  # a pipeline sets it after this call, as for diffusers' own schedulers
        self._pick_segment(num_inference_steps)
        if self.family is not None:
            self._choose_table()
        n = self.solver.nfe
        if timesteps is not None:
            given = torch.as_tensor(np.asarray(timesteps, dtype=np.float64))
            ours = self.timesteps.double().cpu()
            if given.shape != ours.shape or not torch.allclose(given, ours, rtol=SIGMA_TOLERANCE, atol=1e-3):
                raise BNSError("BNSScheduler takes no timesteps but its own: these do not match its table")
        if sigmas is not None and isinstance(self.schedule, FMOT) and _default_flow_sigmas(sigmas):
            sigmas = None
        if sigmas is not None:
            given = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
            ours = self.sigmas.double()[: given.numel()]
            if (
                given.ndim != 1
                or given.numel() not in (n, n + 1)
                or not torch.allclose(given, ours, rtol=SIGMA_TOLERANCE, atol=SIGMA_TOLERANCE)
            ):
                raise BNSError(
                    "BNSScheduler takes no sigmas but its own: the pipeline's do not match the table's "
                    "(pass sigmas=pipe.scheduler.sigmas[:-1] or let the scheduler choose)"
                )
        if num_inference_steps is not None and num_inference_steps != n and self._layout == (0, 0):
            raise BNSError(f"this BNS solver takes exactly {n} steps, not {num_inference_steps}")
        self._check_guidance()
        before, after = self._layout
        lo, hi = self.interval
        t0, t1 = float(self._t[0]), float(self.solver.t_end)
        times = torch.cat([
            torch.linspace(lo, t0, before + 1, dtype=torch.float64)[:-1],  # never run: the pipeline slices them off
            self._t,
            torch.linspace(t1, hi, after + 1, dtype=torch.float64)[1:],
        ])  # fmt: skip
        self.timesteps = network_time(self.schedule, self.config.time_input, times).float().to(device)
        self._check_cutoffs()
        self.num_inference_steps = n + before + after
        self._reset()

    def _pipeline_fractions(self) -> tuple[float | None, float | None]:
        """The pipeline call's denoising_start and denoising_end (SDXL's ensemble of experts), None when unset."""
        pipe = self._pipe() if self._pipe is not None else None
        out = []
        for name in ("_denoising_start", "_denoising_end"):
            value = getattr(pipe, name, None) if pipe is not None else None
            out.append(float(value) if isinstance(value, (int, float)) and 0 < value < 1 else None)
        return out[0], out[1]

    def _pick_segment(self, steps: int | None) -> None:
        """The table for this call: the segment [denoising_start, denoising_end] a pipeline runs, a table that
        starts later for img2img at a strength (checked by set_begin_index), or the whole interval; its
        placeholder steps in `timesteps` are the ones the pipeline slices off by its own rules."""
        lo, hi = self.interval
        start, end = self._pipeline_fractions()
        want = (lo if start is None else start, hi if end is None else end)
        spans = [(float(t.t[0]), float(t.t_end)) for t in self.tables]
        exact = [i for i, (a, b) in enumerate(spans) if abs(a - want[0]) < TOLERANCE and abs(b - want[1]) < TOLERANCE]
        if start is None and end is None and not exact:  # img2img: the table that starts after the noise
            exact = [i for i, (a, b) in enumerate(spans) if a > lo + TOLERANCE and abs(b - hi) < TOLERANCE]
        if len(exact) != 1:
            have = ", ".join(f"[{a:g}, {b:g}] ({self._call_for(a, b)})" for a, b in spans)
            raise BNSError(
                f"this BNSScheduler has no table for the segment [{want[0]:g}, {want[1]:g}] the pipeline runs "
                f"(denoising_start {start}, denoising_end {end}); its tables: {have}"
            )
        table = self.tables[exact[0]]
        self._select(table)
        n, a, b = table.nfe, *spans[exact[0]]
        extra = max(0, (steps or n) - n)
        if extra and abs(a - lo) < TOLERANCE and abs(b - hi) < TOLERANCE:
            raise BNSError(f"this BNS solver takes exactly {n} steps, not {steps}")
        if extra and a <= lo + TOLERANCE and end is None:
            raise BNSError(
                f"this table ends at t = {b:g}: it is for a pipeline call with denoising_end={b:g} "
                f"and num_inference_steps >= {n}"
            )
        self._layout = (extra, 0) if a > lo + TOLERANCE else (0, extra)

    def _call_for(self, a: float, b: float) -> str:
        """The pipeline call a table's segment [a, b] is for."""
        lo, hi = self.interval
        starts, ends = a > lo + TOLERANCE, b < hi - TOLERANCE
        if starts and ends:
            return f"denoising_start={a:g}, denoising_end={b:g}"
        if ends:
            return f"denoising_end={b:g}"
        return f"denoising_start={a:g} or strength {1 - a:g}" if starts else "the whole trajectory"

    def _check_cutoffs(self) -> None:
        """The steps a pipeline keeps for denoising_start / denoising_end (its discrete_timestep_cutoff rules) are
        exactly the table's: one line where a table's time lies on the wrong side of the cutoff."""
        start, end = self._pipeline_fractions()
        before, after = self._layout
        steps = float(self.config.num_train_timesteps)
        n = self.solver.nfe
        for fraction, keep in ((start, "below"), (end, "at or above")):
            if fraction is None:
                continue
            cutoff = int(round(steps - fraction * steps))
            kept = self.timesteps < cutoff if keep == "below" else self.timesteps >= cutoff
            if kept[before : before + n].all() and not kept[:before].any() and not kept[before + n :].any():
                continue
            raise BNSError(
                f"the table's timesteps {[round(float(v), 1) for v in self.timesteps[before : before + n]]} do not "
                f"all lie {keep} the pipeline's cutoff {cutoff} for {fraction:g}: distil the table for this segment"
            )

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """What the network sees at the current step: the sample, or sample / alpha for EDM-style networks
        (computed in fp32, returned in the sample's dtype)."""
        t = self._t[min(self._step, self.solver.nfe - 1)].float().to(sample.device)
        return network_input(self.schedule, self.config.time_input, sample.float(), t).to(sample.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **_):
        """x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u_j, u_i converted from `model_output` at the solver's t_i.

        The state and the arithmetic are fp32 whatever the pipeline's dtype (fp16 and bf16 pipelines
        keep the table's accuracy; bf16 timesteps never index past the schedule's table); the result
        has the sample's dtype."""
        i = self._step
        if i >= self.solver.nfe:
            raise BNSError(f"this BNS solver has {self.solver.nfe} steps; call set_timesteps() to start again")
        if i == 0 and self._layout[0] and self._begin_index != self._layout[0]:
            raise BNSError(
                f"this table starts at t = {float(self._t[0]):g} (img2img strength {1 - float(self._t[0]):g}, or a "
                "refiner's denoising_start): the pipeline must begin at its first step"
            )
        x = sample.float()
        if i == 0:
            self._x0 = x
        t = self._t[i].float().to(sample.device)
        self._us.append(to_velocity(self.schedule, self.prediction, x, t, model_output.float()))
        out = float(self.solver.a[i]) * self._x0
        for j in range(i + 1):
            out = out + float(self.solver.b[i, j]) * self._us[j]
        self._step += 1
        out = out.to(sample.dtype)
        if not return_dict:
            return (out,)
        return BNSSchedulerOutput(prev_sample=out)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t eps at the network-unit timesteps given (img2img, inpainting), in the
        model's own path (diffusers' DDPM form for DDPM models, (1 - sigma) x + sigma eps for flows)."""
        ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
        ours = network_time(self.schedule, self.config.time_input, self._t).cpu()
        idx = torch.stack([(ours - v).abs().argmin() for v in ts])
        if not torch.allclose(ours[idx], ts, atol=1e-3, rtol=1e-4):
            raise BNSError("add_noise takes the scheduler's own timesteps")
        t = self._t[idx]
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha = self.schedule.alpha(t).float().reshape(shape).to(original_samples.device)
        sigma = self.schedule.sigma(t).float().reshape(shape).to(original_samples.device)
        out = alpha * original_samples.float() + sigma * noise.float()
        return out.to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """Flow pipelines' name for add_noise (SD3 and Flux img2img): (1 - sigma) x + sigma eps at the timestep."""
        return self.add_noise(sample, noise, timestep)

    def __len__(self) -> int:
        return len(self.timesteps)


def _default_flow_sigmas(sigmas) -> bool:
    """The sigmas a flow pipeline passes when its user gave none: linspace(1, 1/n, n)."""
    given = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    return given.size > 0 and np.allclose(given, np.linspace(1.0, 1.0 / given.size, given.size), rtol=0, atol=1e-6)


def pipeline_field(pipe, solver: Table) -> NetworkField:
    """The velocity field of a diffusers pipeline: its unet or transformer and its scheduler's config."""
    net = getattr(pipe, "unet", None)
    net = net if net is not None else getattr(pipe, "transformer", None)
    if not isinstance(net, torch.nn.Module) or getattr(pipe, "scheduler", None) is None:
        raise BNSError(f"{type(pipe).__name__} is not a diffusers pipeline with a unet or transformer and a scheduler")
    return network_field(net, dict(pipe.scheduler.config), solver)


def _settings(config: dict | None) -> dict | None:
    """A scheduler config's settings (JSON values, diffusers' bookkeeping keys left out); a BNSScheduler's own
    config gives the settings it carries."""
    if not config:
        return None
    if config.get("_class_name") == BNSScheduler.__name__ or "solver" in config:
        return config.get("original")
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, default=list))


def folder_field(path: str | os.PathLike, solver: Table) -> tuple[dict, NetworkField]:
    """The scheduler config and velocity field of a save_pretrained folder's network and scheduler (no
    condition set needed)."""
    from pathlib import Path

    from .loaders.diffusers import model_class, model_folder, pretrained, scheduler_config

    root = Path(str(path).removeprefix("diffusers:")).expanduser()
    sub, model_cfg = model_folder(root)
    net = pretrained(model_class(model_cfg, sub), sub)
    config = scheduler_config(root)
    return config, network_field(net, config, solver)


def network_field(net: torch.nn.Module, scheduler_config: dict, solver: Table) -> NetworkField:
    """A diffusers network through its class's adapter, with the schedule its scheduler config describes;
    the sample shape is the one the solver was distilled at.  Enough for the scheduler and for the solver's
    network-identity check; conditions come from the pipeline at each call."""
    from .loaders.adapters import AdaptedNet, adapter_for
    from .loaders.schedulers import read_scheduler

    if not isinstance(scheduler_config, dict):
        raise BNSError("the scheduler config is not a JSON object")
    shape = (solver.meta.get("model") or {}).get("sample_shape")
    if not shape:
        raise BNSError("this solver file does not record its model's sample shape: pass the model's field instead")
    spec = read_scheduler(scheduler_config, tuple(shape), type(net).__name__)
    schedule, prediction, time_input = spec.schedule, spec.prediction, spec.time_input
    model_cfg = dict(net.config)
    adapter = adapter_for(type(net).__name__)
    field = NetworkField(
        AdaptedNet(net, adapter),
        schedule,
        tuple(shape),
        prediction=prediction,
        time_input=time_input,
        num_classes=adapter.classes(model_cfg),
        name=f"diffusers:{type(net).__name__}",
    )
    field.embedded_guidance = adapter.embedded_guidance(model_cfg)
    return field
