"""Shipped models (`-m digits`): a folder under models/ with config.json, weights and the network code."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from ..checks import integer, number, read_json
from ..errors import BNSError
from ..fields import ANALYTIC, NetworkField, make_schedule
from ..sizes import check_side_step
from .conditions import load_condition_set
from .network import check_network


def models_dir() -> Path:
    """Where shipped models live: $BNS_EXPORT_MODELS, else `models/` beside the package."""
    env = os.environ.get("BNS_EXPORT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "models"


def shipped_folder(name: str) -> Path | None:
    """The folder of shipped model `name`, or None when there is none."""
    folder = models_dir() / name
    return folder if "/" not in name and ":" not in name and (folder / "config.json").is_file() else None


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


def _import_file(path: Path, name: str):
    mod_name = f"bns_export_models_{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def load_shipped(folder: Path, shape: tuple[int, ...] | None = None) -> NetworkField:
    """A shipped model folder: config.json, weights.safetensors, and the network code it names
    ("code", default net.py, relative to the folder) exposing build_network(**architecture); a
    tensor-conditioned model also names its conditioning set ("cond_set", a safetensors file).  A network
    that runs at any multiple of "size_step" (a convolutional UNet) is loaded at `shape` (--shape) if given."""
    from safetensors.torch import load_file

    cfg = read_json(folder / "config.json", f"{folder.name} config", constants=True)
    step = integer(cfg["size_step"], f"{folder.name} config size_step", 1, 1 << 10) if "size_step" in cfg else None
    base = tuple(cfg["shape"])
    shape = base if shape is None else check_resized(base, tuple(shape), step, folder.name)
    cset = load_condition_set(str(folder / cfg["cond_set"])) if cfg.get("cond_set") else None
    module = _import_file((folder / cfg.get("code", "net.py")).resolve(), folder.name)
    net = module.build_network(**cfg.get("architecture", {}))
    net.load_state_dict(load_file(str(folder / "weights.safetensors")))
    schedule = make_schedule(cfg["schedule"], cfg.get("train_steps", 1000))
    field = NetworkField(
        net,
        schedule,
        shape,
        prediction=cfg["prediction"],
        time_input=cfg["time_input"],
        num_classes=cfg.get("num_classes"),
        t_lo=cfg.get("t_lo"),
        t_hi=cfg.get("t_hi"),
        name=folder.name,
        cond_set=None if cset is None else cset.cond,
        null_cond=None if cset is None else cset.null,
        condition_layout=None if cset is None else cset.layout,
    )
    field.size_step = step
    if "gt_tolerance" in cfg:
        field.gt_tolerance = number(cfg["gt_tolerance"], f"{folder.name} config gt_tolerance", 1e-10, 0.1)
    check_network(field)
    return field


def check_resized(base: tuple[int, ...], shape: tuple[int, ...], step: int | None, name: str) -> tuple[int, ...]:
    """--shape for a shipped model: the config's shape with other spatial sizes, multiples of its size step."""
    if step is None:
        raise BNSError(f"--shape does not apply to shipped model {name!r}: its network runs at {base} only")
    if len(shape) != len(base) or shape[:-2] != base[:-2]:
        raise BNSError(f"--shape {shape} for shipped model {name!r} must keep its channels: {base[:-2]} + (H, W)")
    check_side_step(shape[-2:], step, f"--shape of {name!r}:")
    return shape
