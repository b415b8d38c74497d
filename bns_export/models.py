"""Resolve a model spec to a velocity field: a shipped model, `analytic:NAME`, or `module:factory`."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checks import number
from .errors import BNSError
from .fields import ANALYTIC, PREDICTIONS, SCHEDULES, TIME_INPUTS, GuidedField, NetworkField, make_schedule
from .fields.field import NULL_LABEL, VelocityField


def models_dir() -> Path:
    """Where shipped models live: $BNS_EXPORT_MODELS, else `models/` beside the package."""
    env = os.environ.get("BNS_EXPORT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


@dataclass
class ModelOptions:
    """How to read a user's network (ignored for shipped and analytic models, which know).

    None means "not given": factories then use velocity / fm-ot / t, diffusers folders their configs.
    """

    prediction: str | None = None
    schedule: str | None = None
    time_input: str | None = None
    train_steps: int = 1000
    shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    #: safetensors file with "cond" (N, ...) conditions (e.g. prompt embeddings) and optionally "null" (...),
    #: the unconditional branch's condition (default zeros): the model is then tensor-conditioned
    cond_set: str | None = None
    #: a decoder appended after the sampler (latent models): vae, a diffusers autoencoder folder or
    #: module:factory (see bns_export.decoders); read by compile and sample only
    decoder: str | None = None


def list_models() -> list[dict]:
    """Shipped models (with their card's one-line summary) and the analytic fields."""
    out = []
    root = models_dir()
    if root.is_dir():
        for cfg in sorted(root.glob("*/config.json")):
            d = json.loads(cfg.read_text())
            out.append({"name": cfg.parent.name, "kind": "shipped", "summary": d.get("summary", "")})
    for name, fn in ANALYTIC.items():
        out.append({"name": f"analytic:{name}", "kind": "analytic", "summary": (fn.__doc__ or "").strip()})
    return out


NETWORK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(
    spec: str,
    options: ModelOptions | None = None,
    guidance: float = 1.0,
    device: str = "cpu",
    network_dtype: str = "fp32",
) -> GuidedField:
    """A guided velocity field for `spec` on `device`; guidance w = 1 means none.

    network_dtype: the dtype the network runs in (fp32, bf16, fp16); solver state, conversions,
    guidance and ground truth stay fp32.  The fingerprint does not depend on it.
    """
    if not isinstance(spec, str) or not spec:
        raise BNSError("a model spec must be a shipped model name, analytic:NAME or package.module:factory")
    guidance = number(guidance, "guidance", 0, 100)
    field = _load_field(spec, options or ModelOptions())
    if guidance != 1.0 and not field.conditional:
        raise BNSError(f"model {spec} is unconditional: guidance {guidance} needs a conditional model")
    if network_dtype not in NETWORK_DTYPES:
        raise BNSError(f"unknown network dtype {network_dtype!r}; choose one of {', '.join(NETWORK_DTYPES)}")
    if network_dtype != "fp32":
        if not isinstance(field, NetworkField):
            raise BNSError(f"--network-dtype {network_dtype} needs a network model; analytic fields have no weights")
        field.set_network_dtype(NETWORK_DTYPES[network_dtype])
    return GuidedField(field, guidance).to(device)


def _load_field(spec: str, opt: ModelOptions) -> VelocityField:
    if spec.startswith("analytic:"):
        name = spec.split(":", 1)[1]
        if name not in ANALYTIC:
            known = ", ".join("analytic:" + n for n in ANALYTIC)
            raise BNSError(f"unknown model {spec!r}: analytic fields are {known}")
        return ANALYTIC[name]()
    shipped = models_dir() / spec / "config.json"
    if "/" not in spec and ":" not in spec and shipped.exists():
        return load_shipped(shipped.parent)
    if spec.startswith("diffusers:"):
        from .diffusers_models import load_diffusers_field

        field = load_diffusers_field(spec.split(":", 1)[1], opt)
        check_network(field)
        return field
    if ":" not in spec:
        names = ", ".join(m["name"] for m in list_models())
        raise BNSError(
            f"unknown model {spec!r}: not a shipped model ({names}), diffusers:PATH nor a module:factory path"
        )
    return _load_factory(spec, opt)


def _import_file(path: Path, name: str):
    mod_name = f"bns_export_models_{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def load_shipped(folder: Path) -> NetworkField:
    """A shipped model folder: config.json, weights.safetensors, and the network code it names
    ("code", default net.py, relative to the folder) exposing build_network(**architecture); a
    tensor-conditioned model also names its conditioning set ("cond_set", a safetensors file)."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    cond, null = load_condition_set(str(folder / cfg["cond_set"])) if cfg.get("cond_set") else (None, None)
    module = _import_file((folder / cfg.get("code", "net.py")).resolve(), folder.name)
    net = module.build_network(**cfg.get("architecture", {}))
    net.load_state_dict(load_file(str(folder / "weights.safetensors")))
    schedule = make_schedule(cfg["schedule"], cfg.get("train_steps", 1000))
    field = NetworkField(
        net,
        schedule,
        tuple(cfg["shape"]),
        prediction=cfg["prediction"],
        time_input=cfg["time_input"],
        num_classes=cfg.get("num_classes"),
        t_lo=cfg.get("t_lo"),
        t_hi=cfg.get("t_hi"),
        name=folder.name,
        cond_set=cond,
        null_cond=null,
    )
    if "gt_tolerance" in cfg:
        field.gt_tolerance = number(cfg["gt_tolerance"], f"{folder.name} config gt_tolerance", 1e-10, 0.1)
    check_network(field)
    return field


def call_factory(spec: str, what: str = "model") -> nn.Module:
    """Import `package.module:factory` and call it; it must return an nn.Module (else one line, exit 2)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BNSError(f"bad {what} spec {spec!r}: expected package.module:factory")
    with users_code(f"importing {what} module {module_name!r}"):
        module = importlib.import_module(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BNSError(f"module {module_name!r} has no callable {attr!r}")
    with users_code(f"{what} factory {spec!r}"):
        net = factory()
    if not isinstance(net, nn.Module):
        raise BNSError(f"{what} factory {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _load_factory(spec: str, opt: ModelOptions) -> NetworkField:
    net = call_factory(spec)
    if opt.shape is None:
        raise BNSError(f"model {spec!r} needs --shape (the sample shape, e.g. 1,28,28)")
    prediction, schedule, time_input = opt.prediction or "velocity", opt.schedule or "fm-ot", opt.time_input or "t"
    for value, allowed, what in (
        (prediction, PREDICTIONS, "prediction"),
        (schedule, SCHEDULES, "schedule"),
        (time_input, TIME_INPUTS, "time input"),
    ):
        if value not in allowed:
            raise BNSError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    cond, null = load_condition_set(opt.cond_set) if opt.cond_set else (None, None)
    try:
        field = NetworkField(
            net,
            make_schedule(schedule, opt.train_steps),
            opt.shape,
            prediction,
            time_input,
            opt.num_classes,
            name=spec,
            cond_set=cond,
            null_cond=null,
        )
    except ValueError as e:
        raise BNSError(str(e)) from None
    check_network(field)
    return field


@contextlib.contextmanager
def users_code(what: str):
    """Run a user's code: any exception, a syntax error or sys.exit() inside it is one line, not a traceback."""
    try:
        yield
    except SystemExit as e:
        raise BNSError(f"{what} called sys.exit({e.code!r})") from None
    except Exception as e:  # includes SyntaxError and ImportError raised while importing
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise BNSError(f"{what} failed: {type(e).__name__}: {first}") from None


def load_condition_set(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditions ("cond", (N, ...)) and the optional null condition ("null") of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise BNSError(f"conditioning set not found: {p}")
    try:
        d = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise BNSError(f"{p}: not a safetensors file ({str(e).splitlines()[0][:200]})") from None
    if "cond" not in d:
        raise BNSError(f"{p} has no tensor named 'cond' (N, ...): the conditions pairs draw from")
    cond, null = d["cond"], d.get("null")
    if not cond.is_floating_point() or cond.ndim < 2 or not torch.isfinite(cond).all():
        raise BNSError(f"{p}: 'cond' must be finite floats of shape (N, ...), got {cond.dtype} {tuple(cond.shape)}")
    if null is not None and (tuple(null.shape) != tuple(cond.shape[1:]) or not torch.isfinite(null).all()):
        raise BNSError(f"{p}: 'null' must be finite with shape {tuple(cond.shape[1:])}, got {tuple(null.shape)}")
    return cond, null


def check_network(field: NetworkField) -> None:
    """Forward calls on a batch of 2 at the interval's ends and middle: the output must have the
    sample's shape and be finite (a model returning NaN is named here, with the time, once)."""
    x = torch.zeros((2, *field.sample_shape), dtype=field.default_dtype)
    labels = None
    if field.num_classes is not None:
        labels = torch.tensor([0, NULL_LABEL])  # a class and the null class
    elif field.cond_shape is not None:
        labels = torch.stack([field.cond_set[0], field.null_cond]).to(field.default_dtype)
    for t in (field.t_lo, 0.5 * (field.t_lo + field.t_hi), field.t_hi):
        with users_code(f"model {field.name} on input of shape {tuple(x.shape)} at t={t:.4g}"), torch.no_grad():
            out = field(x, torch.tensor(t), labels)
        if tuple(out.shape) != tuple(x.shape):
            raise BNSError(f"model {field.name} returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if not torch.isfinite(out).all():
            raise BNSError(f"model {field.name} returns NaN or inf at t={t:.4g} (our time: 0 noise, 1 data)")
