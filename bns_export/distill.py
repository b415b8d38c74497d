"""BNS distillation (method.md section 3): optimise (t, a, b) through the unrolled sampler.

Times are parametrised as t_lo + span * cumsum(softmax(logits)), so they stay strictly
increasing with fixed end points; a is free and b is learned relative to the init's step lengths.
The loss is the batch mean of log MSE(x_n, x(1)) per sample (the PSNR loss); the network is
frozen.  Adam's learning rate ramps up linearly over the first `warmup` iterations.  The solver of
the best validation PSNR is kept; when validation stalls, training restarts from the best solver
at half the learning rate (with the ramp again), and stops after a few such halvings; it checkpoints to
`<out>.ckpt.safetensors` and resumes from it after an interruption.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from .checks import integer, number
from .errors import BNSError
from .fields.pipelines import FlowGrid
from .fileio import atomic_file
from .groundtruth import GTSet, tensors_digest
from .metrics import psnr_per_sample
from .parallel import SINGLE, World, all_sum_grads
from .solvers import baseline
from .solvers.sampler import family_tables, ns_sample, recomputed, sample_batches, solver_tensors
from .solvers.table import NSSolver, SolverFamily

log = logging.getLogger(__name__)


class BNSParams(nn.Module):
    """Trainable (t, a, b) of an n-NFE NS solver, initialised from a base solver's table.

    Times: `time_param="t"` spaces them by softmax fractions of [t_lo, t_end] (method.md 3);
    `"logsnr"` by fractions of the log-SNR range, mapped back through a dense monotone table of the
    schedule.  Coefficients: `coef_scale="step"` learns b_ij / h_j, with h_j the init's j-th step
    length, so one Adam learning rate moves every b by the same relative amount (b scales like dt;
    +0.9 to +2.8 dB at equal learning rate on digits and the analytic fields, docs/benchmarks.md);
    `"none"` learns b itself.
    """

    def __init__(self, init: NSSolver, time_param: str = "t", coef_scale: str = "step", schedule=None) -> None:
        super().__init__()
        n = init.nfe
        self.t_lo, self.t_end = float(init.t[0]), float(init.t_end)
        inc = np.diff(np.append(init.t, init.t_end))
        if np.any(inc <= 0):
            raise BNSError(
                f"base solver {init.name} repeats a time; BNS needs strictly increasing times "
                "(use midpoint, euler, ab2, ddim or dpm++2m as base)"
            )
        self.warp = _LogSNRWarp(schedule, self.t_lo, self.t_end) if time_param == "logsnr" else None
        if self.warp is not None:
            # the warp's table as buffers: .to(device) moves it once, not on every tables() call; not
            # persistent, so checkpoints and best-solver snapshots stay the size of (t, a, b)
            self.register_buffer("warp_t", self.warp.t, persistent=False)
            self.register_buffer("warp_lam", self.warp.lam, persistent=False)
            lam = self.warp.lam_of(init.t[1:])
            inc_w = np.diff(np.concatenate([[self.warp.lo], lam, [self.warp.hi]]))
            if np.any(inc_w <= 0):
                raise BNSError(f"base solver {init.name} has a time outside the finite log-SNR range")
            self.logits = nn.Parameter(torch.log(torch.as_tensor(inc_w / (self.warp.hi - self.warp.lo))))
        else:
            self.logits = nn.Parameter(torch.log(torch.as_tensor(inc / (self.t_end - self.t_lo), dtype=torch.float64)))
        h = torch.as_tensor(inc, dtype=torch.float64) if coef_scale == "step" else torch.ones(n, dtype=torch.float64)
        self.register_buffer("b_scale", h.reshape(1, n).expand(n, n).clone())
        # copies of the init's numbers, never views: training must not write into the table it started from
        self.a = nn.Parameter(torch.tensor(init.a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(init.b, dtype=torch.float64) / self.b_scale)
        self.register_buffer("mask", torch.tril(torch.ones(n, n, dtype=torch.float64)))

    def tables(self, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """(t, a, b) in the sampling dtype on the sampling device (differentiable)."""
        cum = torch.cumsum(torch.softmax(self.logits, 0), 0)[:-1]
        if self.warp is not None:
            inner = _interp(self.warp.lo + (self.warp.hi - self.warp.lo) * cum, self.warp_lam, self.warp_t)
        else:
            inner = self.t_lo + (self.t_end - self.t_lo) * cum
        t = torch.cat([inner.new_full((1,), self.t_lo), inner])
        return tuple(v.to(dtype=dtype, device=device) for v in (t, self.a, self.b * self.b_scale * self.mask))

    def solver(self, name: str = "bns", **meta) -> NSSolver:
        t, a, b = (v.detach().cpu().numpy() for v in self.tables())
        return NSSolver(t, a, b, self.t_end, name=name, meta=meta)

    def sample(self, field, gt: GTSet, idx: Tensor, recompute: bool = False) -> Tensor:
        """The loop's samples of the GT pairs at `idx`, differentiable in the table (the BNS loss's forward);
        recompute: each network call's activations recomputed in the backward pass (`recomputed`)."""
        t, a, b = self.tables(gt.noise.dtype, gt.noise.device)
        u = recomputed(field) if recompute else field
        return ns_sample(u, t, a, b, field.start(gt.noise[idx]), gt.condition_at(idx))

    def score(self, field, val: GTSet, world: World = SINGLE) -> float:
        """Mean validation PSNR of the table."""
        return mean_psnr(field, self.tables(val.noise.dtype, val.noise.device), val, world)


class FamilyParams(nn.Module):
    """Trainable tables at a guidance family's knots (a BNSParams each), run at every sample's own guidance with
    the tables interpolated there exactly as the compiled graph does (`family_tables`): the family as one model."""

    def __init__(self, family: SolverFamily, cfg: DistillConfig, schedule=None) -> None:
        super().__init__()
        self.register_buffer("knots", torch.as_tensor(family.knots, dtype=torch.float64), persistent=False)
        self.knot_params = nn.ModuleList(BNSParams(t, cfg.time_param, cfg.coef_scale, schedule) for t in family.tables)

    def tables_at(self, guidance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, a, b) at each guidance (B,) in its dtype: (n, B), (n, B), (n, n, B)."""
        tables = [p.tables(guidance.dtype, guidance.device) for p in self.knot_params]
        stacked = tuple(torch.stack(v) for v in zip(*tables))
        return family_tables(self.knots.to(guidance), stacked, guidance)

    def sample(self, field, gt: GTSet, idx: Tensor, recompute: bool = False) -> Tensor:
        """The loop's samples of the pairs at `idx`, each at its pair's guidance (`gt.guidance`)."""
        w = gt.guidance[idx].to(gt.noise.dtype)
        t, a, b = self.tables_at(w)
        u = functools.partial(field, guidance=w)
        return ns_sample(recomputed(u) if recompute else u, t, a, b, field.start(gt.noise[idx]), gt.condition_at(idx))

    def score(self, field, val: list[tuple[float, GTSet]], world: World = SINGLE) -> float:
        """Mean validation PSNR over the guidance points, each set run at its own scale."""
        scores = []
        for w, gt in val:
            field.set_guidance(w)
            t, a, b = self.tables_at(torch.full((1,), w, dtype=gt.noise.dtype, device=gt.noise.device))
            scores.append(mean_psnr(field, (t[:, 0], a[:, 0], b[:, :, 0]), gt, world))
        return sum(scores) / len(scores)

    def family(self, like: SolverFamily, tables_meta: list[dict], meta: dict) -> SolverFamily:
        """The trained tables as a family with the knots and names of `like`, each knot with its record."""
        tables = [p.solver(t.name, **m) for p, t, m in zip(self.knot_params, like.tables, tables_meta)]
        return SolverFamily(like.knots, tables, name=like.name, meta=meta)


class _LogSNRWarp:
    """t as a function of log-SNR lambda on [t_lo, t_end]: piecewise-linear on a dense grid of t
    (2^16 + 1 points; differentiable in lambda), restricted to where lambda is finite."""

    def __init__(self, schedule, t_lo: float, t_end: float, points: int = 65537) -> None:
        if schedule is None:
            raise BNSError("time_param='logsnr' needs the field's schedule")
        t = torch.linspace(t_lo, t_end, points, dtype=torch.float64)
        with torch.no_grad():
            lam = schedule.log_snr(t)
        keep = torch.isfinite(lam)
        self.t, self.lam = t[keep], torch.cummax(lam[keep], 0).values  # monotone for searchsorted
        if self.lam.numel() < 2 or not bool((torch.diff(self.lam) > 0).all()):
            raise BNSError("time_param='logsnr' needs a strictly increasing log-SNR on the interval")
        self.lo, self.hi = float(self.lam[0]), float(self.lam[-1])

    def lam_of(self, t: np.ndarray) -> np.ndarray:
        """log-SNR of times by the same table (so _interp back through it returns t at the init)."""
        return np.interp(t, self.t.numpy(), self.lam.numpy())


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp increasing, x clamped to its range; differentiable in x."""
    x = torch.clamp(x, xp[0], xp[-1])
    k = torch.searchsorted(xp, x.detach()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[k - 1], xp[k], fp[k - 1], fp[k]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


#: the distillation options that are one of a few names, checked once in DistillConfig
CHOICES = {"learn": ("all", "times"), "time_param": ("t", "logsnr"), "coef_scale": ("step", "none")}


@dataclass
class DistillConfig:
    """Training settings; every field is recorded in the solver file."""

    nfe: int = 8
    # "auto": the best of AUTO_BASES on validation (measured: digits NFE 8, 39.8 dB in 400 iterations vs 35.7 dB in
    # 2000 from midpoint); "paper": midpoint for even NFE, Euler for odd (method.md); or any classic solver spec
    base: str = "auto"
    precondition: float | None = None  # sigma_0
    iterations: int = 2000
    batch_size: int = 128
    # lr and warmup measured with coef_scale="step" (docs/benchmarks.md, ablation-scale-*, ablation-warmup-digits):
    # digits NFE 8 45.7 dB vs 43.1 at 3e-3; the warmup keeps the analytic fields within 2 dB of 3e-3 (without it,
    # 3e-2 loses 3-12 dB there)
    lr: float = 3e-2
    val_every: int = 25
    # validations without improvement before the learning rate is halved; 12 measured better than 4 (analytic:gmm
    # NFE 16: 78.95 vs 73.18 dB; analytic:points NFE 12: 81.85 vs 73.76 dB; tools/ablate_distill.py)
    patience: int = 12
    max_decays: int = 5  # halvings before early stopping
    warmup: int = 100  # iterations of linear learning-rate ramp at the start and after every restart
    learn: str = "all"  # "all": times, a and b; "times": times only (a, b stay the base solver's), an ablation
    time_param: str = "t"  # "t" or "logsnr": the variable whose range the learned time fractions split
    coef_scale: str = "step"  # "step": b learned relative to the init's step lengths; "none": b itself
    seed: int = 0
    #: recompute each network call's activations in the backward pass: memory flat in the NFE, for one more forward
    #: call per step; None: for networks of RECOMPUTE_FROM parameters or more (small ones keep theirs: faster)
    recompute: bool | None = None
    #: pairs per forward/backward pass, the gradients accumulated over the batch (None: the whole batch at once)
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        integer(self.nfe, "nfe", 1, 64)
        integer(self.warmup, "warmup", 0, 10_000_000)
        for key in ("iterations", "batch_size", "val_every", "patience"):
            integer(getattr(self, key), key, 1, 10_000_000)
        integer(self.max_decays, "max_decays", 0, 100)
        if self.micro_batch is not None:
            integer(self.micro_batch, "micro_batch", 1, 10_000_000)
        number(self.lr, "lr", 0, 10, lo_open=True)
        if self.precondition is not None:
            number(self.precondition, "precondition", 0, 100, lo_open=True)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise BNSError(f"unknown {key}={getattr(self, key)!r}: use one of {', '.join(allowed)}")

    def recipe(self) -> dict:
        """The fields that decide the result (a run's identity, a solver file's record): not how it is computed
        (recomputation and micro-batches give the same table)."""
        return {k: v for k, v in asdict(self).items() if k not in ("recompute", "micro_batch")}

    def base_solver(self) -> str:
        """The single base solver of a non-auto config."""
        if self.base in (None, "paper"):
            return "midpoint" if self.nfe % 2 == 0 else "euler"
        return self.base


#: the network size from which distillation recomputes activations unless told (an SD-class UNet has 860M)
RECOMPUTE_FROM = 10_000_000


def recomputes(cfg: DistillConfig, field) -> bool:
    """Whether an iteration recomputes each network call's activations: as configured, else for big networks."""
    if cfg.recompute is not None:
        return bool(cfg.recompute)
    return sum(p.numel() for p in field.parameters()) >= RECOMPUTE_FROM


#: candidates of `base="auto"`: one-step and two-stage solvers with strictly increasing times
AUTO_BASES = ["midpoint", "euler", "ab2", "ddim", "dpm++2m", "dpm++2m:karras", "ddim:logsnr", "euler:logsnr"]
AUTO_BASES += ["dpm++3m", "unipc", "unipc-bh1", "deis", "ipndm", "unipc:karras", "deis:karras"]
#: and, for a flow model whose pipeline shifts its times (SD3, Flux, Sana), its pipeline's own grid
PIPELINE_BASES = ["euler:pipeline", "dpm++2m:pipeline"]


def initial_solver(field, cfg: DistillConfig, val: GTSet, world: World = SINGLE) -> tuple[NSSolver, float]:
    """The base solver (the best on validation when base == "auto") and its validation PSNR."""
    dtype, device = val.noise.dtype, val.noise.device
    names = [cfg.base_solver()]
    if cfg.base == "auto":
        names = [b for b in AUTO_BASES if not (b == "midpoint" and cfg.nfe % 2)]
        if isinstance(field.schedule.pipeline, FlowGrid):
            names += PIPELINE_BASES
    best = None
    for name in names:
        try:
            solver = warm_start(name, cfg.nfe, field) or baseline(
                name, cfg.nfe, field.schedule, field.t_lo, field.t_hi, cfg.precondition
            )
        except BNSError:
            if cfg.base == "auto":  # e.g. DDIM cannot be preconditioned: not a candidate then
                continue
            raise
        psnr = mean_psnr(field, solver_tensors(solver, dtype, device), val, world)
        if best is None or psnr > best[1]:
            best = (solver, psnr)
    return best


def warm_start(spec: str, nfe: int, field) -> NSSolver | None:
    """`--base FILE.json`: a distilled table to start from (the base model's table for its fine-tune, say), when
    its NFE and interval are this distillation's; None for a classic solver's name."""
    from .solvers import parse_spec

    parsed = parse_spec(spec)
    if not parsed.is_file:
        return None
    table = parsed.table
    if not isinstance(table, NSSolver):
        raise BNSError(f"--base {spec}: a guidance family cannot start one table; give one of its tables")
    if table.nfe != nfe:
        raise BNSError(f"--base {spec} has {table.nfe} NFE; this distillation has {nfe}")
    if abs(table.t[0] - field.t_lo) > 1e-9 or abs(table.t_end - field.t_hi) > 1e-9:
        raise BNSError(
            f"--base {spec} runs [{table.t[0]:g}, {table.t_end:g}]; this distillation [{field.t_lo:g}, {field.t_hi:g}]"
        )
    return NSSolver(table.t, table.a, table.b, name=f"init {Path(spec).name}", t_end=table.t_end)


def mean_psnr(field, tables: tuple[Tensor, Tensor, Tensor], gt: GTSet, world: World, batch_size: int = 256) -> float:
    """Mean per-sample PSNR over gt: fixed batches shared out over the ranks, sums all-reduced."""
    total = torch.zeros(2, dtype=torch.float64, device=gt.noise.device)
    for lo in world.mine(range(0, len(gt), batch_size)):
        part = slice(lo, lo + batch_size)
        x = sample_batches(field, *tables, gt.noise[part], gt.condition_at(part), batch_size)
        psnr = psnr_per_sample(x, gt.x1[part])
        total += torch.stack([psnr.sum(), torch.tensor(float(psnr.numel()), device=psnr.device)])
    total = world.all_sum(total)
    return float(total[0] / total[1])


def _ckpt_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt.safetensors")


def _run_id(**parts) -> str:
    """A run's identity (what a checkpoint must match to be resumed): a digest of its recipe, model and data."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _save_ckpt(path: Path, params: nn.Module, best: dict[str, Tensor], opt: torch.optim.Adam, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{k}": v.detach() for k, v in params.state_dict().items()}
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


def _is_ckpt_file(path: Path) -> bool:
    """A distillation checkpoint of this tool (any run's), which a new run may replace and then remove."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return "run_id" in json.loads((f.metadata() or {}).get("state", "{}"))
    except Exception:
        return False


#: a checkpoint's tensors, by prefix: the table's parameters, the best table so far, Adam's moments
CKPT_PARTS = ("param", "best", "adam")


def _load_ckpt(path: Path, params: nn.Module, opt: torch.optim.Adam, run_id: str) -> tuple[dict, dict] | None:
    """This run's checkpoint: (state, best table), None when it is another run's.  One that does not load whole
    (damaged, mis-shaped, not finite) is reported once and set aside as `<path>.bad`, so the next run starts
    afresh instead of failing on it again; nothing is changed in `params` or `opt` unless all of it loads."""
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
        loaded = _checked_ckpt({k: v.to(device) for k, v in tensors.items()}, state, params)
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
    return state, loaded["best"]


def _checked_ckpt(tensors: dict[str, Tensor], state: dict, params: nn.Module) -> dict[str, dict[str, Tensor]]:
    """A checkpoint's tensors by part (param, best, adam), each the shape of the parameter it restores and finite,
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
        (re)start."""
        ramp = min(1.0, (self.since_restart + 1) / cfg.warmup) if cfg.warmup else 1.0
        return cfg.lr * 0.5**self.decays * ramp

    def running(self, cfg: DistillConfig) -> bool:
        return self.iteration < cfg.iterations and self.decays <= cfg.max_decays


@dataclass
class Trainer:
    """One distillation's moving parts: the field, the parameterised table and its optimiser, the GT sets."""

    field: nn.Module
    params: BNSParams | FamilyParams
    opt: torch.optim.Adam
    trained: list[nn.Parameter]
    train: GTSet
    val: GTSet | list[tuple[float, GTSet]]  # what params.score takes
    cfg: DistillConfig
    world: World
    #: each network call's activations recomputed in the backward pass (`recomputes`, decided once)
    recompute: bool = False

    @classmethod
    def make(
        cls, field, params: BNSParams | FamilyParams, train: GTSet, val, cfg: DistillConfig, world: World
    ) -> Trainer:
        """A trainer over every parameter the recipe learns (`learn="times"` keeps each table's a and b)."""
        if cfg.learn == "times":
            for table in params.modules():
                if isinstance(table, BNSParams):
                    table.a.requires_grad_(False)
                    table.b.requires_grad_(False)
        trained = [p for p in params.parameters() if p.requires_grad]
        opt = torch.optim.Adam(trained, lr=cfg.lr)
        return cls(field, params, opt, trained, train, val, cfg, world, recomputes(cfg, field))

    def step(self, state: TrainState) -> None:
        """One Adam step on the mean log-MSE of a seeded batch of GT pairs through the unrolled loop
        (method.md, the BNS loss); under torchrun each rank takes its share of the batch, and a share larger than
        `micro_batch` is run in micro-batches whose gradients add up to the whole share's."""
        cfg, train, world = self.cfg, self.train, self.world
        for group in self.opt.param_groups:
            group["lr"] = state.learning_rate(cfg)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.iteration)
        batch = torch.randperm(len(train), generator=g)[: cfg.batch_size]
        idx = batch[world.rank :: world.size].to(train.noise.device)  # this rank's share of the one seeded batch
        self.opt.zero_grad()
        loss = torch.zeros((), dtype=train.noise.dtype, device=train.noise.device)
        for part in idx.split(cfg.micro_batch or max(1, len(idx))):
            x = self.params.sample(self.field, train, part, self.recompute)
            mse = ((x - train.x1[part]) ** 2).flatten(1).mean(1)
            part_loss = torch.log(mse).sum() / len(batch)  # summed over micro-batches and ranks: the batch mean
            part_loss.backward()
            loss = loss + part_loss.detach()
        all_sum_grads(world, self.trained)
        self.opt.step()
        state.iteration += 1
        state.since_restart += 1
        mean_loss = world.all_sum(loss.detach()).item()
        if not math.isfinite(mean_loss):
            raise BNSError(
                f"the distillation loss became NaN or inf at iteration {state.iteration}: the model or GT is not finite"
            )
        state.train_psnr = float(10 * math.log10(4.0) - 10 * mean_loss / math.log(10))

    def validate(self, state: TrainState, best: dict[str, Tensor]) -> tuple[float, dict[str, Tensor]]:
        """Validation PSNR; keep the best table, and on a plateau (`patience` validations without gain)
        restart from it at half the step size."""
        v = self.params.score(self.field, self.val, self.world)
        if v > state.best_val + 1e-3:
            state.best_val, state.best_iter, state.stale = v, state.iteration, 0
            return v, self.snapshot()
        state.stale += 1
        if state.stale >= self.cfg.patience:
            state.stale, state.decays, state.since_restart = 0, state.decays + 1, 0
            self.params.load_state_dict(best)
            self.opt.state.clear()
        return v, best

    def snapshot(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.params.state_dict().items()}


def fit(
    trainer: Trainer,
    state: TrainState,
    ckpt: Path | None = None,
    resume: bool = True,
    progress: Callable[[int, dict], None] | None = None,
) -> float:
    """The training loop (method.md, the BNS recipe): Adam steps, a validation every `val_every` iterations
    keeping the best table, plateau restarts, a checkpoint after each validation (resumed when `resume` and it
    is this run's); leaves the best table in `trainer.params` and returns the wall time spent before this call."""
    cfg, params, world = trainer.cfg, trainer.params, trainer.world
    best = trainer.snapshot()
    if ckpt is not None and ckpt.exists() and not _is_ckpt_file(ckpt):
        raise BNSError(f"{ckpt} exists and is not a checkpoint this tool wrote: move it, or choose another --out")
    if resume and ckpt is not None and ckpt.exists():
        loaded = _load_ckpt(ckpt, params, trainer.opt, state.run_id)
        if loaded is not None:
            state.__dict__.update(loaded[0])
            best = loaded[1]
    started, elapsed0 = time.time(), state.elapsed
    while state.running(cfg):
        trainer.step(state)
        if state.iteration % cfg.val_every == 0 or state.iteration == cfg.iterations:
            v, best = trainer.validate(state, best)
            state.elapsed = elapsed0 + time.time() - started
            if ckpt is not None and world.is_main:
                _save_ckpt(ckpt, params, best, trainer.opt, asdict(state))
            if progress:
                info = {"val_psnr": v, "best_val_psnr": state.best_val, "train_psnr": state.train_psnr}
                progress(state.iteration, info)
    params.load_state_dict(best)
    return elapsed0


def distill(
    field,
    train: GTSet,
    val: GTSet,
    cfg: DistillConfig,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: Callable[[int, dict], None] | None = None,
    world: World = SINGLE,
    init: NSSolver | None = None,
) -> NSSolver:
    """Train a BNS solver for `field` (a guided field if guidance is wanted) on GT pairs.

    init: the table to start from (a neighbouring guidance knot's, for a family) instead of `cfg.base`.

    `progress(iteration, info)` is called after every validation.  With `out`, a checkpoint is
    kept next to it while training and removed when the solver file is written.  Under torchrun
    (`world`) each rank runs its share of every batch, the summed loss's flat gradient is
    all-reduced once per iteration, and validation means are all-reduced, so every rank takes
    the steps one process would; rank 0 writes checkpoints and the solver file.
    """
    started = time.time()
    if cfg.batch_size < world.size:
        raise BNSError(f"--batch-size {cfg.batch_size} is smaller than the {world.size} processes")
    warm = init is not None
    if init is None:
        init, init_val = initial_solver(field, cfg, val, world)
    else:
        init_val = mean_psnr(field, solver_tensors(init, val.noise.dtype, val.noise.device), val, world)
    params = BNSParams(init, cfg.time_param, cfg.coef_scale, field.schedule).to(train.noise.device)
    trainer = Trainer.make(field, params, train, val, cfg, world)
    ckpt = _ckpt_path(Path(out)) if out is not None else None
    start = {"init": init.fingerprint()} if warm else {}  # a family's knot starts from its neighbour's table
    run_id = _run_id(cfg=cfg.recipe(), field=field.fingerprint(), train=train.key, val=val.key, **start)
    state = TrainState(run_id=run_id, best_val=init_val)
    elapsed0 = fit(trainer, state, ckpt, resume, progress)
    solver = params.solver(
        name=f"bns-{cfg.nfe}",
        **provenance(field, init, init_val, state, trainer, round(elapsed0 + time.time() - started, 3)),
    )
    if out is not None and world.is_main:
        solver.save(out)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    world.barrier()
    return solver


def distill_family(
    field,
    knots: tuple[float, ...],
    pairs: Callable[[nn.Module], tuple[GTSet, GTSet]],
    cfg: DistillConfig,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: Callable[[float | None, int, dict], None] | None = None,
    world: World = SINGLE,
    joint: bool = True,
) -> SolverFamily:
    """One BNS table per guidance knot, in increasing order, each started from the previous knot's table (the
    first from `cfg.base`), so that neighbouring tables stay in one basin; then, with `joint`, every knot
    trained together so that the tables interpolated between them are trained too (`distill_jointly`).

    `pairs(field)` gives the (train, val) GT sets at the field's current guidance.  With `out`, each finished
    knot is kept beside it (`<out>.knot-W.json`, reused by a rerun of the same recipe) until the family file is
    written.  `progress(w, iteration, info)` names the knot, None in the joint stage.
    """
    if getattr(field, "embedded", False) or not field.conditional:
        raise BNSError("a guidance family needs a conditional model with classifier-free guidance")
    tables: list[NSSolver] = []
    parts: list[Path] = []  # the knot files this run wrote or took over from an interrupted run of this recipe
    for w in knots:
        field.set_guidance(w)
        part = None if out is None else Path(out).with_name(f"{Path(out).name}.knot-{w:g}.json")
        table = _finished_knot(part, cfg, field) if resume else None
        if table is None and part is not None and part.exists() and not _is_knot_file(part):
            raise BNSError(f"{part} exists and is not a knot this tool wrote: move it, or choose another --out")
        if part is not None:
            parts.append(part)
        if table is None:
            train, val = pairs(field)
            report = None if progress is None else functools.partial(progress, w)
            table = distill(
                field,
                train,
                val,
                cfg,
                out=part,
                resume=resume,
                progress=report,
                world=world,
                init=tables[-1] if tables else None,
            )
        tables.append(table)
    first = tables[0].meta
    meta = {k: first[k] for k in ("model_fingerprint", "model_identity", "model_signature", "model") if k in first}
    meta.update(
        kind="bns-family",
        config=cfg.recipe(),
        tool_version=__version__,
        wall_time_s=round(sum(t.meta.get("wall_time_s", 0.0) for t in tables), 3),
    )
    family = SolverFamily(knots, tables, name=f"bns-{cfg.nfe}-w{knots[0]:g}-{knots[-1]:g}", meta=meta)
    if joint:
        report = None if progress is None else functools.partial(progress, None)
        family = distill_jointly(field, family, pairs, cfg, out, resume, report, world)
    if out is not None and world.is_main:
        family.save(out)
        for part in parts:
            part.unlink(missing_ok=True)
    world.barrier()
    return family


def distill_jointly(
    field,
    family: SolverFamily,
    pairs: Callable[[nn.Module], tuple[GTSet, GTSet]],
    cfg: DistillConfig,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: Callable[[int, dict], None] | None = None,
    world: World = SINGLE,
) -> SolverFamily:
    """Train a family's knot tables together: every batch draws GT pairs at the knots and at the midpoints
    between them, each pair run with the tables interpolated at its own guidance as the compiled graph runs
    them (`FamilyParams`), so the BNS loss (method.md) covers the interpolation and not only the knots.

    Starts from the family's tables at half the step size (as after a plateau restart) and keeps the best
    mean validation PSNR over the points, so it never returns a family worse on validation than its start.
    Measured (docs/benchmarks.md, "Guidance families"): on digits-text at NFE 8, knots 2, 3, 4, +0.40 and +0.03 dB
    over the chained family at w = 2.5 and 3.5; at NFE 4, knots 2, 4, 6, 8, within 0.04 dB of it either way.
    """
    started = time.time()
    knots = [float(w) for w in family.knots]
    points = sorted(set(knots) | {(lo + hi) / 2 for lo, hi in zip(knots, knots[1:])})
    trains, vals = {}, []
    for w in points:
        field.set_guidance(w)
        train, val = pairs(field)
        trains[w] = train
        vals.append((w, val))
    train = GTSet.join(trains)
    params = FamilyParams(family, cfg, field.schedule).to(train.noise.device)
    trainer = Trainer.make(field, params, train, vals, cfg, world)
    start_val = params.score(field, vals, world)
    val_keys = [val.key for _, val in vals]
    run_id = _run_id(
        cfg=cfg.recipe(), field=field.fingerprint(), train=train.key, val=val_keys, family=family.fingerprint()
    )
    state = TrainState(run_id=run_id, best_val=start_val, decays=1)  # half the step size: a refinement
    ckpt = None if out is None else _ckpt_path(Path(out))
    elapsed0 = fit(trainer, state, ckpt, resume, progress)
    tables_meta = []
    for (w, val), knot, table in zip(((w, v) for w, v in vals if w in knots), params.knot_params, family.tables):
        field.set_guidance(w)
        scores = {
            "val_psnr": knot.score(field, val, world),
            "train_psnr": knot.score(field, trains[w], world),
            "chained_val_psnr": table.meta.get("val_psnr"),
        }
        tables_meta.append({**table.meta, **scores, "joint": True})
    wall = round(elapsed0 + time.time() - started, 3)
    record = {
        "points": points,
        "val_psnr_start": start_val,
        "val_psnr": state.best_val,
        "best_iteration": state.best_iter,
        "iterations": state.iteration,
        "train_pairs": len(train),
        "wall_time_s": wall,
    }
    meta = {**family.meta, "joint": record, "wall_time_s": round(family.meta.get("wall_time_s", 0.0) + wall, 3)}
    joined = params.family(family, tables_meta, meta)
    if ckpt is not None and world.is_main:
        ckpt.unlink(missing_ok=True)
    return joined


def _is_knot_file(path: Path) -> bool:
    """A solver file a distillation of this tool wrote (another recipe's knot, which a new run may replace)."""
    try:
        return NSSolver.load(path).meta.get("kind") == "bns"
    except BNSError:
        return False


def _finished_knot(path: Path | None, cfg: DistillConfig, field) -> NSSolver | None:
    """A knot an earlier run of the same recipe finished for this network and guidance, else None."""
    if path is None or not path.exists():
        return None
    try:
        table = NSSolver.load(path)
    except BNSError:
        return None
    same = table.meta.get("config") == cfg.recipe() and table.meta.get("model_identity") == field.network_identity()
    return table if same and table.meta.get("guidance") == float(field.guidance) else None


def provenance(field, init: NSSolver, init_val: float, state: TrainState, trainer: Trainer, wall_s: float) -> dict:
    """What a distilled solver file records about its making: the model (and its identity), the start,
    the scores, the budget and the recipe."""
    train, cfg = trainer.train, trainer.cfg
    tables = trainer.params.tables(train.noise.dtype, train.noise.device)
    return {
        "kind": "bns",
        "base_solver": init.meta.get("base_solver", init.name),
        "base_val_psnr": init_val,
        "precondition_sigma0": cfg.precondition,
        "model_fingerprint": field.fingerprint(),
        "model_identity": field.network_identity(),
        "model_signature": field.network_signature(),
        "model": field.describe(),
        "guidance": float(field.guidance),
        "train_psnr": mean_psnr(field, tables, train, trainer.world),
        "val_psnr": state.best_val,
        "best_iteration": state.best_iter,
        "iterations": state.iteration,
        "train_pairs": len(train),
        "val_pairs": len(trainer.val),
        "gt_nfe_mean": train.nfe_mean,
        "config": cfg.recipe(),
        "wall_time_s": wall_s,
        "world_size": trainer.world.size,
        "tool_version": __version__,
    }
