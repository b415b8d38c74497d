"""The one reader of diffusers scheduler configs: the ODE a folder's scheduler defines (its noise schedule and
prediction type) and the grid its pipeline steps on by default, as diffusers computes them, or one line.

Every key that changes the ODE or the pipeline's grid is honoured (betas, trained_betas, num_train_timesteps,
rescale_betas_zero_snr, CogVideoX's snr_shift_scale, timestep_spacing, steps_offset, Karras / exponential
sigmas, lambda_min_clipped, shift, flow_shift with use_flow_sigmas, dynamic shifting with its base / max shift
and sequence lengths, time_shift_type, shift_terminal; the cosine DPM-Solver's EDM noise levels, Stable Audio's);
a value this reader does not implement is refused by name (REFUSED), never ignored.  Keys that only change a
sampler's own arithmetic (solver order, clipping, thresholding, set_alpha_to_one) are not the ODE and are left to
the sampler.  `tests/data/scheduler_configs/` holds the configs of the public pipelines this is checked against,
with diffusers' own scheduler objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import integer, number
from ..errors import BNSError
from ..fields.pipelines import DiscreteGrid, EDMGrid, FlowGrid
from ..fields.schedules import FMOT, DDPMDiscrete, EDMPreconditioned, Schedule

#: the most training steps a scheduler config may name (diffusers' own are 1000; checked before allocating)
MAX_TRAIN_STEPS = 1_000_000

#: diffusers' prediction_type names -> ours (one table; the BNSScheduler reads it too)
DIFFUSERS_PREDICTIONS = {
    "epsilon": "eps",
    "v_prediction": "v",
    "sample": "x0",
    "flow_prediction": "flow",
    "velocity": "velocity",
}


@dataclass(frozen=True)
class SchedulerKind:
    """What a scheduler class's set_timesteps does (DiscreteGrid's style and rounding), and whether it keeps a
    zero terminal alpha_bar (DDIM) or lifts it to 2^-24 (Euler, DPM-Solver, UniPC: 'so the first sigma is not
    inf')."""

    style: str = "n"
    rounded: bool = True
    lifts_zero_terminal: bool = False
    #: the class's default timestep_spacing (a config without the key gets it)
    spacing: str = "leading"


#: the discrete (DDPM-family) scheduler classes whose default grid is mirrored, by class name
DISCRETE = {
    "DDIMScheduler": SchedulerKind(),
    "DDPMScheduler": SchedulerKind(),
    "PNDMScheduler": SchedulerKind(),
    "CogVideoXDDIMScheduler": SchedulerKind(),
    "CogVideoXDPMScheduler": SchedulerKind(),
    "EulerDiscreteScheduler": SchedulerKind(rounded=False, lifts_zero_terminal=True, spacing="linspace"),
    "EulerAncestralDiscreteScheduler": SchedulerKind(rounded=False, lifts_zero_terminal=True, spacing="linspace"),
    "LMSDiscreteScheduler": SchedulerKind(rounded=False, spacing="linspace"),
    "DPMSolverMultistepScheduler": SchedulerKind("n+1", lifts_zero_terminal=True, spacing="linspace"),
    "UniPCMultistepScheduler": SchedulerKind("n+1", lifts_zero_terminal=True, spacing="linspace"),
    "DEISMultistepScheduler": SchedulerKind("n+1", spacing="linspace"),
}
#: flow-matching scheduler classes (FM-OT velocity, timesteps 1000 sigma)
FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: the multistep classes with use_flow_sigmas, and how each spaces them (FlowGrid.start)
FLOW_SIGMAS = {"DPMSolverMultistepScheduler": "dpm-flow-sigmas", "UniPCMultistepScheduler": "unipc-flow-sigmas"}

#: keys whose other values change the ODE or the grid in ways not implemented here: key -> the accepted values
REFUSED = {
    "timestep_type": ("discrete",),  # "continuous": the network takes 0.25 log sigma
    "interpolation_type": ("linear",),  # "log_linear": Euler's sigmas respaced in log
    "use_lu_lambdas": (False,),
    "use_beta_sigmas": (False,),
    "invert_sigmas": (False,),  # Mochi's inverted flow sigmas
    "time_shift_type": ("exponential", "linear"),
    "sigma_min": (None,),  # EDM schedules other than EDM_SCHEDULERS' (EDMEulerScheduler: 0.25 log sigma time input)
    "sigma_max": (None,),
    "sigma_data": (None,),
}
#: the EDM scheduler classes read (their own keys, not REFUSED's): class -> the network's time input
EDM_SCHEDULERS = {"CosineDPMSolverMultistepScheduler": "edm-atan"}


def check_keys(cfg: dict) -> None:
    """One line for a key whose value would change the ODE or the grid in a way this reader does not implement."""
    for key, accepted in REFUSED.items():
        if key in cfg and cfg[key] not in accepted:
            raise BNSError(
                f"scheduler config {key}={cfg[key]!r} changes the ODE or its grid in a way bns-export does not "
                f"implement (it takes {', '.join(map(repr, accepted))})"
            )
    if sum(bool(cfg.get(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_flow_sigmas")) > 1:
        raise BNSError(
            "scheduler config sets more than one of use_karras_sigmas, use_exponential_sigmas, use_flow_sigmas"
        )


def base_betas(cfg: dict) -> torch.Tensor:
    """The training betas of a DDPM-family config, each value checked before anything is allocated: 2 to
    MAX_TRAIN_STEPS steps, betas in (0, 1), beta_start <= beta_end."""
    steps = integer(cfg.get("num_train_timesteps", 1000), "scheduler num_train_timesteps", 2, MAX_TRAIN_STEPS)
    if cfg.get("trained_betas") is not None:
        trained = cfg["trained_betas"]
        if not isinstance(trained, list) or not 2 <= len(trained) <= MAX_TRAIN_STEPS:
            raise BNSError(f"scheduler trained_betas must be a list of 2..{MAX_TRAIN_STEPS} numbers")
        return torch.tensor(
            [number(b, "scheduler trained_betas", 0, 1, lo_open=True) for b in trained], dtype=torch.float64
        )
    start = number(cfg.get("beta_start", 1e-4), "scheduler beta_start", 0, 1, lo_open=True)
    end = number(cfg.get("beta_end", 0.02), "scheduler beta_end", 0, 1, lo_open=True)
    if end < start:
        raise BNSError(f"scheduler beta_end {end:g} is below beta_start {start:g}: the noise would shrink over time")
    kind = cfg.get("beta_schedule", "linear")
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        b = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
        return torch.tensor(b, dtype=torch.float64)
    raise BNSError(f"unsupported beta_schedule {kind!r}: use linear, scaled_linear or squaredcos_cap_v2")


def alphas_cumprod(cfg: dict, kind: SchedulerKind | None = None) -> torch.Tensor:
    """alpha_bar per training step as the scheduler builds it: cumprod(1 - beta); CogVideoX's SNR shift
    ab / (s + (1 - s) ab); zero terminal SNR (Lin et al. 2024, Algorithm 1: sqrt(ab) shifted to end at 0 and
    rescaled to keep its start), whose last 0 Euler, DPM-Solver and UniPC lift to 2^-24."""
    ab = torch.cumprod(1.0 - base_betas(cfg), 0)
    snr_shift = number(cfg.get("snr_shift_scale", 1.0), "scheduler snr_shift_scale", 0, 1000, lo_open=True)
    if snr_shift != 1.0:
        ab = ab / (snr_shift + (1.0 - snr_shift) * ab)
    if cfg.get("rescale_betas_zero_snr"):
        root = ab.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        ab = ((root - last) * first / (first - last)) ** 2
        if kind is not None and kind.lifts_zero_terminal:
            ab[-1] = 2.0**-24
    return ab


def dynamic_shift(cfg: dict, seq_len: int) -> float:
    """The shift of a dynamically shifted flow pipeline: exp(mu) (time_shift_type exponential) or mu (linear), with
    mu linear in the latent's token count between (base_image_seq_len, base_shift) and (max_image_seq_len,
    max_shift), as the pipelines' calculate_shift computes it."""
    base_len = integer(cfg.get("base_image_seq_len", 256), "base_image_seq_len", 1)
    max_len = integer(cfg.get("max_image_seq_len", 4096), "max_image_seq_len", base_len + 1)
    base, top = (number(cfg.get(k, d), k, -100, 100) for k, d in (("base_shift", 0.5), ("max_shift", 1.15)))
    m = (top - base) / (max_len - base_len)
    mu = seq_len * m + base - m * base_len
    return mu if cfg.get("time_shift_type") == "linear" else math.exp(mu)


def _shift(cfg: dict, key: str) -> float:
    return number(cfg.get(key, 1.0), f"scheduler config {key}", 0, 1000, lo_open=True)


def flow_grid(cfg: dict, cls_name: str, start: str, seq_len: int) -> FlowGrid:
    """The pipeline grid of a flow scheduler config; `start` and `seq_len` say what the pipeline passes it."""
    steps = integer(cfg.get("num_train_timesteps", 1000), "scheduler num_train_timesteps", 2, MAX_TRAIN_STEPS)
    terminal = cfg.get("shift_terminal")
    terminal = None if not terminal else number(terminal, "scheduler shift_terminal", 0, 1, lo_open=True)
    if cfg.get("use_flow_sigmas"):  # DPM-Solver / UniPC over flow sigmas: their own grids, flow_shift
        start = FLOW_SIGMAS.get(cls_name)
        if start is None or cfg.get("final_sigmas_type", "zero") != "zero" or cfg.get("use_dynamic_shifting"):
            raise BNSError(
                f"{cls_name} with use_flow_sigmas, final_sigmas_type {cfg.get('final_sigmas_type', 'zero')!r} and "
                f"use_dynamic_shifting {bool(cfg.get('use_dynamic_shifting'))} is not mirrored (DPM-Solver and UniPC "
                "with final sigma zero and a fixed flow_shift are)"
            )
        grid = FlowGrid(cls_name, _shift(cfg, "flow_shift"), start, shift_terminal=terminal, train_steps=steps)
        if terminal and start == "dpm-flow-sigmas":
            raise BNSError(f"{cls_name} takes no shift_terminal")
        return grid
    if cfg.get("use_karras_sigmas") or cfg.get("use_exponential_sigmas"):
        raise BNSError(f"{cls_name} with Karras or exponential flow sigmas is not implemented")
    if cfg.get("use_dynamic_shifting"):
        shift, sigma_min = dynamic_shift(cfg, seq_len), 1.0 / steps
    else:
        shift = _shift(cfg, "shift")
        sigma_min = float(shift * (1.0 / steps) / (1 + (shift - 1) * (1.0 / steps)))
    return FlowGrid(cls_name, shift, start, sigma_min, terminal, steps)


def discrete_grid(cfg: dict, cls_name: str, kind: SchedulerKind) -> DiscreteGrid:
    """The pipeline grid of a DDPM-family scheduler config."""
    spacing = cfg.get("timestep_spacing", kind.spacing)
    if spacing not in ("linspace", "leading", "trailing"):
        raise BNSError(f"scheduler config timestep_spacing {spacing!r} is not one of linspace, leading, trailing")
    sigmas = (
        "karras" if cfg.get("use_karras_sigmas") else "exponential" if cfg.get("use_exponential_sigmas") else "default"
    )
    clip = cfg.get("lambda_min_clipped")
    clip = None if clip is None or clip == -math.inf else number(clip, "scheduler lambda_min_clipped", -1000, 1000)
    offset = integer(cfg.get("steps_offset", 0), "scheduler config steps_offset", 0, 1000)
    return DiscreteGrid(cls_name, spacing, offset, kind.style, kind.rounded, sigmas, clip)


def edm_grid(cfg: dict, cls_name: str) -> EDMGrid:
    """The pipeline grid of an EDM scheduler config whose network takes the v form with sigma_data 1 and steps to
    sigma 0 (Stable Audio Open's); any other choice is refused by name."""
    for key, want in (("prediction_type", "v_prediction"), ("sigma_data", 1.0), ("final_sigmas_type", "zero")):
        if cfg.get(key, want) != want:
            raise BNSError(f"{cls_name} with {key} {cfg[key]!r} is not mirrored (bns-export reads {want!r})")
    spacing = cfg.get("sigma_schedule", "exponential")
    if spacing not in ("exponential", "karras"):
        raise BNSError(f"{cls_name} sigma_schedule {spacing!r} is not one of exponential, karras")
    lo = number(cfg.get("sigma_min", 0.3), "scheduler sigma_min", 0, 1e6, lo_open=True)
    hi = number(cfg.get("sigma_max", 500.0), "scheduler sigma_max", lo, 1e6, lo_open=True)
    rho = number(cfg.get("rho", 7.0), "scheduler rho", 0, 1000, lo_open=True)
    return EDMGrid(cls_name, lo, hi, spacing, rho)


@dataclass(frozen=True)
class SchedulerSpec:
    """What a folder's scheduler config defines: the ODE (schedule, prediction, time input) and, on the schedule,
    its pipeline's default grid."""

    schedule: Schedule
    prediction: str
    time_input: str


#: what a model class's pipeline passes its flow scheduler's set_timesteps as sigmas (FlowGrid.start); others
#: pass none ("scheduler": SD3, AuraFlow, Sana, Wan)
PIPELINE_SIGMAS = {
    "FluxTransformer2DModel": "one-over-n",  # FluxPipeline: np.linspace(1.0, 1 / n, n)
    "LTXVideoTransformer3DModel": "one-over-n",  # LTXPipeline
    "Lumina2Transformer2DModel": "one-over-n",  # Lumina2Pipeline
    "HunyuanVideoTransformer3DModel": "uniform",  # HunyuanVideoPipeline: np.linspace(1.0, 0.0, n + 1)[:-1]
}


def token_count(model_class: str, sample_shape: tuple[int, ...]) -> int:
    """The latent's token count a dynamically shifted pipeline computes mu from: (H/2)(W/2) for 2x2-patch image
    transformers (Flux), frames x H x W for LTX-Video (1x1x1 patches)."""
    if model_class == "LTXVideoTransformer3DModel":
        return math.prod(sample_shape[1:])
    return (sample_shape[-2] // 2) * (sample_shape[-1] // 2)


def read_scheduler(cfg: dict, sample_shape: tuple[int, ...] = (1, 1), model_class: str = "") -> SchedulerSpec:
    """The ODE and pipeline grid of a save_pretrained scheduler config (see the module docstring), for a model of
    `model_class` (whose pipeline decides the flow sigmas it passes) at `sample_shape` (a dynamic shift's size)."""
    if not isinstance(cfg, dict):
        raise BNSError("the scheduler config is not a JSON object")
    cls_name = str(cfg.get("_class_name") or "a scheduler")
    if cls_name in EDM_SCHEDULERS:
        grid = edm_grid(cfg, cls_name)
        schedule = EDMPreconditioned(grid.sigma_min, grid.sigma_max)
        schedule.pipeline = grid
        return SchedulerSpec(schedule, "v", EDM_SCHEDULERS[cls_name])
    check_keys(cfg)
    flow_start = PIPELINE_SIGMAS.get(model_class, "scheduler")
    seq_len = token_count(model_class, sample_shape)
    ptype = cfg.get("prediction_type", "epsilon")
    if cls_name in FLOW or ptype == "flow_prediction" or cfg.get("use_flow_sigmas"):
        if ptype not in ("flow_prediction", "epsilon") and cls_name not in FLOW:
            raise BNSError(f"{cls_name} with flow sigmas predicts {ptype!r}; flow models predict flow_prediction")
        schedule = FMOT()
        schedule.pipeline = flow_grid(cfg, cls_name, flow_start, seq_len)
        return SchedulerSpec(schedule, "flow", "flow-timestep")
    if ptype not in DIFFUSERS_PREDICTIONS:
        raise BNSError(f"unsupported prediction_type {ptype!r}: use {', '.join(DIFFUSERS_PREDICTIONS)}")
    kind = DISCRETE.get(cls_name)
    try:
        schedule = DDPMDiscrete.from_alphas_cumprod(alphas_cumprod(cfg, kind))
    except (ValueError, TypeError) as e:
        raise BNSError(f"bad scheduler config: {e}") from None
    if kind is not None:
        schedule.pipeline = discrete_grid(cfg, cls_name, kind)
    return SchedulerSpec(schedule, DIFFUSERS_PREDICTIONS[ptype], "index")
