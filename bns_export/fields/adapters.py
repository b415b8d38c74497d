"""Adapters from a user's network (prediction type, time input) to our velocity field u."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .conditions import LEGACY_NAME, ConditionLayout, ConditionPart
from .field import NULL_LABEL, VelocityField
from .schedules import EDM, DDPMDiscrete, Schedule

PREDICTIONS = ("velocity", "flow", "eps", "x0", "v")
TIME_INPUTS = ("t", "s", "index", "sigma", "flow-timestep", "edm-atan")


class NetworkField(VelocityField):
    """Wraps `net(x, time, labels)` (or `net(x, time)`) predicting velocity/flow/eps/x0/v.

    prediction: "velocity" is our u; "flow" is the diffusers flow output eps - x1 (= -u);
    "eps", "x0" (data) and "v" (alpha eps - sigma x1) convert exactly (method.md section 1).
    time_input: "t" our time, "s" = 1 - t, "index" a DDPM step index (needs a ddpm schedule),
    "sigma" the EDM noise level sigma/alpha (the network then also sees x/alpha); "edm-atan" the cosine
    DPM-Solver's 2 atan(sigma/alpha) / pi (its precondition_noise).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        sample_shape: tuple[int, ...],
        prediction: str = "velocity",
        time_input: str = "t",
        num_classes: int | None = None,
        null_label: int | None = None,
        t_lo: float | None = None,
        t_hi: float | None = None,
        name: str = "network",
        cond_set: Tensor | None = None,
        null_cond: Tensor | None = None,
        cond_kwarg: str | None = None,
        condition_layout: ConditionLayout | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time input {time_input!r}; choose one of {', '.join(TIME_INPUTS)}")
        if time_input == "index" and not isinstance(schedule, DDPMDiscrete):
            raise ValueError("time input 'index' needs the ddpm schedule")
        ends = torch.tensor([schedule.t_lo, schedule.t_hi], dtype=torch.float64)
        if t_lo is None and prediction == "eps" and float(schedule.alpha(ends)[0]) == 0.0:
            t_lo = 1e-3  # eps form divides by alpha = 0
        if t_hi is None and prediction == "x0" and float(schedule.sigma(ends)[1]) == 0.0:
            t_hi = 1.0 - 1e-3  # data form divides by sigma = 0
        super().__init__(schedule, sample_shape, num_classes, t_lo, t_hi)
        self.net = net
        #: tensor conditioning: the set GT pairs draw from (N, *cond_shape), the null condition, and the
        #: keyword the network takes it by (None: third positional argument)
        if cond_set is not None:
            if num_classes is not None:
                raise ValueError("a model takes class labels or a tensor condition, not both")
            cond_set = torch.as_tensor(cond_set, dtype=torch.float32)
            if cond_set.ndim < 2 or cond_set.shape[0] < 1:
                raise ValueError(f"a conditioning set is (N, ...) with N >= 1, got shape {tuple(cond_set.shape)}")
            self.cond_shape = tuple(cond_set.shape[1:])
            null = (
                torch.zeros(self.cond_shape) if null_cond is None else torch.as_tensor(null_cond, dtype=torch.float32)
            )
            if tuple(null.shape) != self.cond_shape:
                raise ValueError(
                    f"null condition has shape {tuple(null.shape)}, the set's conditions {self.cond_shape}"
                )
            self.register_buffer("cond_set", cond_set)
            self.register_buffer("null_cond", null)
            #: the condition's named tensors (one part named `cond` for today's single tensor)
            self.condition_layout = condition_layout or ConditionLayout((ConditionPart(LEGACY_NAME, self.cond_shape),))
            if self.condition_layout.shape != self.cond_shape:
                raise ValueError(f"condition layout {self.condition_layout.shape} does not match {self.cond_shape}")
        self.cond_kwarg = cond_kwarg
        self.prediction = prediction
        self.time_input = time_input
        self.null_label = num_classes if null_label is None else int(null_label)
        self.name = name
        #: dtype the network runs in (None: the sample's); conversions and the solver stay in the sample's
        self.net_dtype: torch.dtype | None = None
        #: mixed precision for distillation/eval/sampling on GPUs (None: off)
        self.autocast_dtype: torch.dtype | None = None
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def set_embedded_guidance(self, guidance: float) -> None:
        """Feed the guidance scale to the network's guidance embedding (Flux-dev): one call per step, no CFG."""
        self.net.set_constant("guidance", torch.tensor(float(guidance)))

    def set_network_dtype(self, dtype: torch.dtype) -> None:
        """Run the network under autocast to `dtype` (bf16/fp16; weights stay fp32, so the fingerprint
        does not change); conversions to velocity, guidance and the solver stay in the sample's dtype."""
        self.autocast_dtype = None if dtype == torch.float32 else dtype

    def velocity(self, x: Tensor, t: Tensor, condition: Tensor | None) -> Tensor:
        tb = t.expand(x.shape[0]) if t.ndim == 0 else t
        t = t if t.ndim == 0 else t.reshape(-1, *[1] * (x.ndim - 1))  # one time per sample: broadcast over x
        xin = network_input(self.schedule, self.time_input, x, t)
        if self.net_dtype is not None:
            xin = xin.to(self.net_dtype)
        args, kwargs = (xin, network_time(self.schedule, self.time_input, tb)), {}
        cond = None
        if self.cond_shape is not None:
            cond = self.null_cond.expand(x.shape[0], *self.cond_shape) if condition is None else condition.to(xin.dtype)
        elif self.num_classes is not None:
            if condition is None:
                condition = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long, device=x.device)
            cond = torch.where(condition == NULL_LABEL, torch.full_like(condition, self.null_label), condition)
        if cond is not None and self.cond_kwarg:
            kwargs[self.cond_kwarg] = cond
        elif cond is not None:
            args += (cond,)
        if self.autocast_dtype is None:
            out = self.net(*args, **kwargs)
        else:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                out = self.net(*args, **kwargs)
        return to_velocity(self.schedule, self.prediction, x, t, out.to(x.dtype))

    def network_weights(self) -> nn.Module:
        """The network only: the condition set and the null condition are data, not the model."""
        return self.net

    def null_condition(self, cond: Tensor) -> Tensor:
        """The null condition (zeros or the given empty-prompt embedding) for tensor fields, else NULL_LABEL."""
        if self.cond_shape is None:
            return super().null_condition(cond)
        return self.null_cond.to(cond.dtype).expand_as(cond)

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            name=self.name,
            prediction=self.prediction,
            time_input=self.time_input,
            null_label=self.null_label if self.num_classes is not None else None,
        )
        if self.condition_layout is not None and not self.condition_layout.legacy:  # old fingerprints unchanged
            d["conditions"] = self.condition_layout.describe()
        if self.embedded_guidance:
            d["embedded_guidance"] = True
        return d


def network_time(schedule: Schedule, time_input: str, t: Tensor) -> Tensor:
    """The network's time input for our time t: t, s = 1 - t, the DDPM step index, 1000 (1 - t), EDM's
    sigma/alpha or its cosine form 2 atan(sigma/alpha) / pi."""
    if time_input == "t":
        return t
    if time_input == "s":
        return 1.0 - t
    if time_input == "index":
        return schedule.step_index(t)
    if time_input == "flow-timestep":  # diffusers' flow-matching models: sigma * 1000, sigma = 1 - t
        return 1000.0 * (1.0 - t)
    if time_input == "edm-atan":  # CosineDPMSolverMultistepScheduler.precondition_noise
        return torch.atan(schedule.sigma(t) / schedule.alpha(t)) * (2.0 / math.pi)
    return schedule.sigma(t) / schedule.alpha(t)


def network_input(schedule: Schedule, time_input: str, x: Tensor, t: Tensor) -> Tensor:
    """What the network sees: x, or x / alpha for EDM-style networks (sigma time input or the edm schedule)."""
    return x / schedule.alpha(t) if (time_input == "sigma" or isinstance(schedule, EDM)) else x


def to_velocity(schedule: Schedule, prediction: str, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
    """Our velocity u from a network output (method.md section 1): velocity as is, diffusers' flow target
    negated, eps / x0 / v through u = (alpha' x1 + sigma' eps) with x = alpha x1 + sigma eps."""
    if prediction == "velocity":
        return out
    if prediction == "flow":
        return -out
    a, s, da, ds = schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t)
    if prediction == "eps":
        return (da / a) * x + (ds - s * da / a) * out
    if prediction == "x0":
        return (ds / s) * x + (da - a * ds / s) * out
    # v = alpha eps - sigma x1, general form (reduces to (ds a - da s) v for VP)
    n2 = a * a + s * s
    return ((da * a + ds * s) * x + (ds * a - da * s) * out) / n2
