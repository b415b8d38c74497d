"""Where a distillation run stands (TrainState) and its checkpoint `<out>.ckpt.safetensors`: the table, the best
table so far and Adam's moments, written after every validation and resumed only by the same run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..fileio import atomic_file
from ..groundtruth import tensors_digest
from .config import DistillConfig

log = logging.getLogger(__name__)


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt.safetensors")


def run_identity(**parts) -> str:
    """A run's identity (what a checkpoint must match to be resumed): a digest of its recipe, model and data."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(
    path: Path, params: nn.Module, best: dict[str, Tensor], opt: torch.optim.Adam, state: dict, ball: Tensor | None
) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{k}": v.detach() for k, v in params.state_dict().items()}
    if ball is not None:
        tensors["ball.offsets"] = ball
    tensors.update({f"best.{k}": v for k, v in best.items()})
    for i, p in enumerate(params.parameters()):
        st = opt.state.get(p)
        if st:
            tensors[f"adam.{i}.exp_avg"] = st["exp_avg"]
            tensors[f"adam.{i}.exp_avg_sq"] = st["exp_avg_sq"]
            tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"]).reshape(1).double()
    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}  # the file holds CPU tensors
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata={"state": json.dumps(state), "digest": tensors_digest(tensors)})


def is_checkpoint_file(path: Path) -> bool:
    """A distillation checkpoint of this tool (any run's), which a new run may replace and then remove."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return "run_id" in json.loads((f.metadata() or {}).get("state", "{}"))
    except Exception:
        return False


#: a checkpoint's tensors, by prefix: the table's parameters, the best table so far, Adam's moments, and the
#: training noises' offsets of a tolerance-ball run
CKPT_PARTS = ("param", "best", "adam", "ball")


def load_checkpoint(
    path: Path, params: nn.Module, opt: torch.optim.Adam, run_id: str, ball: Tensor | None
) -> tuple[dict, dict] | None:
    """This run's checkpoint: (state, best table), None when it is another run's.  One that does not load whole
    (damaged, mis-shaped, not finite) is reported once and set aside as `<path>.bad`, so the next run starts
    afresh instead of failing on it again; nothing is changed in `params`, `opt` or `ball` (a tolerance-ball run's
    offsets, filled in place) unless all of it loads."""
    from safetensors import safe_open

    device = next(params.parameters()).device
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            state = json.loads(meta["state"])
            if state.get("run_id") != run_id:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "digest" in meta and meta["digest"] != tensors_digest(tensors):
            raise ValueError("its tensors do not match their digest: the file is damaged")
        loaded = checked_checkpoint({k: v.to(device) for k, v in tensors.items()}, state, params, ball)
    except Exception as e:  # anything wrong with the file: set it aside, never fail every rerun on it
        bad = path.with_name(path.name + ".bad")
        with contextlib.suppress(OSError):
            os.replace(path, bad)
        log.warning(
            "checkpoint %s does not load (%s); set aside as %s, starting afresh", path, _first_line(e), bad.name
        )
        return None
    params.load_state_dict(loaded["param"])
    for i, p in enumerate(params.parameters()):
        if f"{i}.exp_avg" in loaded["adam"]:
            opt.state[p] = {
                "exp_avg": loaded["adam"][f"{i}.exp_avg"],
                "exp_avg_sq": loaded["adam"][f"{i}.exp_avg_sq"],
                "step": loaded["adam"][f"{i}.step"].reshape(()).cpu(),
            }
    if ball is not None:
        ball.copy_(loaded["ball"]["offsets"])
    return state, loaded["best"]


def checked_checkpoint(
    tensors: dict[str, Tensor], state: dict, params: nn.Module, ball: Tensor | None = None
) -> dict[str, dict[str, Tensor]]:
    """A checkpoint's tensors by part (param, best, adam, ball), each the shape of what it restores and finite,
    and a state TrainState accepts; else ValueError naming what is wrong."""
    TrainState(**state)  # a TypeError for unknown or missing fields
    own = params.state_dict()
    parts = {
        part: {k[len(part) + 1 :]: v for k, v in tensors.items() if k.startswith(part + ".")} for part in CKPT_PARTS
    }
    shapes = {name: p.shape for name, p in own.items()}
    for part in ("param", "best"):
        if {k: v.shape for k, v in parts[part].items()} != shapes:
            raise ValueError(f"its {part} tensors do not match this solver's parameters")
    if {k: v.shape for k, v in parts["ball"].items()} != ({} if ball is None else {"offsets": ball.shape}):
        raise ValueError("its noise offsets do not match this run's pairs")
    by_index = dict(enumerate(p.shape for p in params.parameters()))
    for key, value in parts["adam"].items():
        index, _, kind = key.partition(".")
        if not index.isdecimal() or int(index) not in by_index or kind not in ("exp_avg", "exp_avg_sq", "step"):
            raise ValueError(f"unknown optimiser entry {key}")
        if kind != "step" and value.shape != by_index[int(index)]:
            raise ValueError(f"optimiser entry {key} has the wrong shape")
    if not all(torch.isfinite(v).all() for part in parts.values() for v in part.values()):
        raise ValueError("it holds NaN or inf")
    return parts


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


@dataclass
class TrainState:
    """Where a distillation run stands (checkpointed as JSON): the iteration, the best validation PSNR and
    when it was reached, the plateau counters (validations without gain, learning-rate halvings, iterations
    since the last restart), the last training PSNR and the wall time spent so far."""

    run_id: str
    iteration: int = 0
    best_val: float = -math.inf
    best_iter: int = 0
    stale: int = 0
    decays: int = 0
    since_restart: int = 0
    train_psnr: float | None = None
    elapsed: float = 0.0

    def learning_rate(self, cfg: DistillConfig) -> float:
        """Adam's step size: halved at every plateau, ramped linearly over `warmup` iterations after each
        (re)start, and with `schedule="cosine"` annealed over the run (SGDR's cosine, Loshchilov & Hutter 2017)."""
        ramp = min(1.0, (self.since_restart + 1) / cfg.warmup) if cfg.warmup else 1.0
        anneal = 0.5 * (1 + math.cos(math.pi * self.iteration / cfg.iterations)) if cfg.schedule == "cosine" else 1.0
        return cfg.lr * 0.5**self.decays * ramp * anneal

    def running(self, cfg: DistillConfig) -> bool:
        return self.iteration < cfg.iterations and self.decays <= cfg.max_decays
