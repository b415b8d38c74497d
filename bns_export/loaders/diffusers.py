"""`-m diffusers:PATH`: a local folder written by diffusers' `save_pretrained` as a velocity field.

The folder is a pipeline (`model_index.json`, `unet/` or `transformer/`, `scheduler/`) or holds
those subfolders.  Schedule (beta_schedule linear / scaled_linear / squaredcos_cap_v2, trained
betas, num_train_timesteps), prediction type (epsilon, v_prediction, sample; flow for
FlowMatchEulerDiscreteScheduler) and time input come from the configs; explicit options override.
Weights are read from safetensors only (nothing is unpickled).  Needs the `diffusers` package.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..checks import read_json
from ..errors import EXIT_MISSING_BACKEND, BNSError
from ..fields import NetworkField
from ..fields.schedules import FMOT, DDPMDiscrete
from .conditions import load_condition_set

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


class DiffusersNet(nn.Module):
    """net(x, time[, condition]) -> the model's `.sample`: the condition goes in as `encoder_hidden_states`
    for text-conditioned models, else as `class_labels`."""

    def __init__(self, model: nn.Module, text: bool = False) -> None:
        super().__init__()
        self.model = model
        self.key = "encoder_hidden_states" if text else "class_labels"

    def forward(self, x, t, cond=None):
        kwargs = {} if cond is None else {self.key: cond}
        return self.model(x, t, **kwargs).sample


def betas(cfg: dict) -> torch.Tensor:
    """The training betas of a diffusers DDPM-family scheduler config."""
    steps = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        return torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
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


def import_diffusers():
    """The diffusers package with its loading notices silenced (e.g. "install accelerate"), or exit code 3."""
    try:
        import diffusers
    except ImportError:
        raise BNSError(
            "diffusers models need the diffusers package: pip install diffusers", EXIT_MISSING_BACKEND
        ) from None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


def model_class(cfg, folder: Path) -> type[nn.Module]:
    """The diffusers model class a save_pretrained config.json names (its `_class_name`)."""
    diffusers = import_diffusers()
    cls_name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise BNSError(f"{folder}/config.json names {cls_name!r}, not a diffusers model class")
    return cls


def pretrained(cls: type, folder: Path) -> nn.Module:
    """cls.from_pretrained(folder) in eval mode, from safetensors only (nothing is unpickled); a weights file
    with missing, unexpected or mis-shaped tensors is refused (diffusers would leave memory uninitialised)."""
    if not list(folder.glob("*.safetensors")):
        raise BNSError(f"{folder} has no .safetensors weights; bns-export never unpickles .bin files")
    try:
        model, info = cls.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True)
    except Exception as e:
        raise BNSError(
            f"cannot load {cls.__name__} from {folder}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    for key, what in (
        ("missing_keys", "lacks"),
        ("unexpected_keys", "has unexpected"),
        ("mismatched_keys", "has mis-shaped"),
    ):
        names = [k[0] if isinstance(k, tuple) else k for k in (info or {}).get(key) or []]
        if names:
            shown = ", ".join(map(str, names[:3])) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise BNSError(f"{folder}: the weights file {what} tensor(s) {shown} for {cls.__name__}")
    errors = (info or {}).get("error_msgs") or []
    if errors:
        raise BNSError(f"{folder}: loading the weights failed: {str(errors[0]).splitlines()[0][:200]}")
    return model.eval()


def load_diffusers_field(path: str, opt) -> NetworkField:
    """The velocity field of a diffusers folder; options given explicitly (not None) override the configs."""
    import_diffusers()  # exit 3 before anything is read when diffusers is missing
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BNSError(f"diffusers folder not found: {root}")
    sub = next((root / s for s in ("unet", "transformer") if (root / s / "config.json").is_file()), None)
    if sub is None:
        raise BNSError(f"{root} has no unet/ or transformer/ folder with a config.json (save_pretrained layout)")
    model_cfg = read_json(sub / "config.json", "model config")
    cls = model_class(model_cfg, sub)
    text = "cross_attention_dim" in model_cfg or "encoder_hid_dim" in model_cfg
    if text and not opt.cond_set:
        raise BNSError(
            f"{cls.__name__} is conditioned on encoder_hidden_states: give --cond-set FILE.safetensors with 'cond' "
            "(N, L, D) prompt embeddings (and 'null', the empty prompt's)"
        )
    model = pretrained(cls, sub)
    sched_cfg = read_json(root / "scheduler" / "scheduler_config.json", "scheduler config")
    if not isinstance(sched_cfg, dict):
        raise BNSError(f"{root}/scheduler/scheduler_config.json is not a JSON object")
    if sched_cfg.get("_class_name") in FLOW_SCHEDULERS:
        schedule, prediction, time_input = FMOT(), "flow", "flow-timestep"
    else:
        try:
            schedule = DDPMDiscrete(betas(sched_cfg))
        except ValueError as e:
            raise BNSError(f"bad scheduler config: {e}") from None
        ptype = sched_cfg.get("prediction_type", "epsilon")
        if ptype not in PREDICTIONS:
            raise BNSError(f"unsupported prediction_type {ptype!r}: use epsilon, v_prediction or sample")
        prediction, time_input = PREDICTIONS[ptype], "index"
    size = model_cfg.get("sample_size", 64)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    shape = opt.shape or (int(model_cfg.get("in_channels", 4)), *map(int, size))
    # class-conditional diffusers models embed K classes + 1 null class (the last): -1 maps to it
    classes = model_cfg.get("num_class_embeds")
    classes = int(classes) - 1 if classes and int(classes) > 1 else None
    cond, null = (None, None)
    if opt.cond_set:
        cond, null = load_condition_set(opt.cond_set)
    try:
        return NetworkField(
            DiffusersNet(model, text),
            schedule,
            shape,
            prediction=opt.prediction or prediction,
            time_input=opt.time_input or time_input,
            num_classes=None if cond is not None else (opt.num_classes if opt.num_classes is not None else classes),
            name=f"diffusers:{root.name}",
            cond_set=cond,
            null_cond=null,
        )
    except ValueError as e:
        raise BNSError(str(e)) from None
