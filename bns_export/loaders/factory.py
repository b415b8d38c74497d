"""`-m package.module:factory`: a user's factory returning an nn.Module, read with the given options."""

from __future__ import annotations

import importlib

from torch import nn

from ..errors import BNSError
from ..fields import PREDICTIONS, SCHEDULES, TIME_INPUTS, NetworkField, make_schedule
from .conditions import load_condition_set
from .network import check_network, users_code
from .spec import ModelOptions


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


def check_choice(value: str, allowed, what: str) -> str:
    """One of a vocabulary's names, else one line listing them."""
    if value not in allowed:
        raise BNSError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def load_factory_field(spec: str, opt: ModelOptions) -> NetworkField:
    """The velocity field of a factory's network: velocity / fm-ot / t unless the options say otherwise."""
    if opt.shape is None:
        raise BNSError(f"model {spec!r} needs --shape (the sample shape, e.g. 1,28,28)")
    prediction = check_choice(opt.prediction or "velocity", PREDICTIONS, "prediction")
    schedule = check_choice(opt.schedule or "fm-ot", SCHEDULES, "schedule")
    time_input = check_choice(opt.time_input or "t", TIME_INPUTS, "time input")
    net = call_factory(spec)
    cset = load_condition_set(opt.cond_set) if opt.cond_set else None
    try:
        field = NetworkField(
            net,
            make_schedule(schedule, opt.train_steps),
            opt.shape,
            prediction,
            time_input,
            opt.num_classes,
            name=spec,
            cond_set=None if cset is None else cset.cond,
            null_cond=None if cset is None else cset.null,
            condition_layout=None if cset is None else cset.layout,
        )
    except ValueError as e:
        raise BNSError(str(e)) from None
    check_network(field)
    return field
