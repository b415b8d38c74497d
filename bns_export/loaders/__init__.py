"""The loading wing: `-m SPEC` -> ModelSpec (parsed once) -> velocity field, plus decoders and condition sets.

One module per source: shipped models (`shipped`), analytic fields (fields.analytic), user
factories (`factory`), diffusers folders (`diffusers`), decoders (`decoders`), condition sets
(`conditions`); `spec` holds the record the manifest stores and the validator rebuilds from.
"""

from __future__ import annotations

import torch

from ..checks import guidance_scale
from ..errors import BNSError
from ..fields import ANALYTIC, GuidedField, NetworkField
from ..fields.field import VelocityField
from .conditions import load_condition_set
from .factory import call_factory, load_factory_field
from .network import check_network, users_code
from .shipped import list_models, load_shipped, models_dir, shipped_folder
from .spec import ANALYTIC_PREFIX, DIFFUSERS_PREFIX, ModelOptions, ModelSpec

NETWORK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(
    spec: str | ModelSpec,
    options: ModelOptions | None = None,
    guidance: float = 1.0,
    device: str = "cpu",
    network_dtype: str = "fp32",
) -> GuidedField:
    """A guided velocity field for `spec` on `device`; guidance w = 1 means none.

    network_dtype: the dtype the network runs in (fp32, bf16, fp16); solver state, conversions,
    guidance and ground truth stay fp32.  The fingerprint does not depend on it.
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec, options or ModelOptions())
    guidance = guidance_scale(guidance)
    field = _load_field(spec)
    if guidance != 1.0 and not field.conditional:
        raise BNSError(f"model {spec.model} is unconditional: guidance {guidance} needs a conditional model")
    if network_dtype not in NETWORK_DTYPES:
        raise BNSError(f"unknown network dtype {network_dtype!r}; choose one of {', '.join(NETWORK_DTYPES)}")
    if network_dtype != "fp32":
        if not isinstance(field, NetworkField):
            raise BNSError(f"--network-dtype {network_dtype} needs a network model; analytic fields have no weights")
        field.set_network_dtype(NETWORK_DTYPES[network_dtype])
    return GuidedField(field, guidance).to(device)


def _refuse_options(spec: ModelSpec, what: str, allowed: tuple[str, ...] = ()) -> None:
    """Shipped and analytic models know how they are read: options that would be ignored are an error."""
    given = [g for g in spec.options.given() if g not in allowed]
    if given:
        flags = ", ".join("--" + g.replace("_", "-") for g in given)
        raise BNSError(f"{flags} do(es) not apply to {what} {spec.model!r}, which knows how it is read")


def _load_field(spec: ModelSpec) -> VelocityField:
    if spec.kind == "analytic":
        name = spec.model[len(ANALYTIC_PREFIX) :]
        if name not in ANALYTIC:
            known = ", ".join(ANALYTIC_PREFIX + n for n in ANALYTIC)
            raise BNSError(f"unknown model {spec.model!r}: analytic fields are {known}")
        _refuse_options(spec, "analytic field")
        return ANALYTIC[name]()
    if spec.kind == "diffusers":
        from .diffusers import load_diffusers_field

        field = load_diffusers_field(spec.model[len(DIFFUSERS_PREFIX) :], spec.options)
        check_network(field)
        return field
    if spec.options.loras:
        raise BNSError(f"--lora applies to diffusers models, not {spec.model!r}")
    if spec.kind == "factory":
        return load_factory_field(spec.model, spec.options)
    folder = shipped_folder(spec.model)
    if folder is None:
        names = ", ".join(m["name"] for m in list_models())
        raise BNSError(
            f"unknown model {spec.model!r}: not a shipped model ({names}), diffusers:PATH nor a module:factory path"
        )
    _refuse_options(spec, "shipped model", allowed=("shape",))
    return load_shipped(folder, spec.options.shape)


__all__ = [
    "NETWORK_DTYPES",
    "ModelOptions",
    "ModelSpec",
    "call_factory",
    "check_network",
    "list_models",
    "load_condition_set",
    "load_model",
    "load_shipped",
    "models_dir",
    "users_code",
]
