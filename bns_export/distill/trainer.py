"""One BNS table trained through the unrolled sampler (method.md section 3): the base it starts from, Adam steps on
the PSNR loss, validation keeping the best table, plateau restarts, checkpoints, and the file's provenance."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import BNSError
from ..fields.pipelines import FlowGrid
from ..groundtruth import GTSet
from ..parallel import SINGLE, World, all_sum_grads
from ..solvers import baseline
from ..solvers.sampler import solver_tensors
from ..solvers.table import NSSolver
from .checkpoints import TrainState, checkpoint_path, is_checkpoint_file, load_checkpoint, run_identity, save_checkpoint
from .config import AUTO_BASES, PIPELINE_BASES, DistillConfig, recomputes
from .params import BNSParams, FamilyParams, mean_psnr


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
    from ..solvers import parse_spec

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
    #: a tolerance-ball run's offsets of the training pairs' noises (`ball_step`); None: the exact loss
    ball: Tensor | None = None

    @classmethod
    def make(
        cls, field, params: BNSParams | FamilyParams, train: GTSet, val, cfg: DistillConfig, world: World
    ) -> Trainer:
        """A trainer over every parameter the recipe learns (`learn="times"` keeps each table's a and b)."""
        if cfg.ball and world.size > 1:
            raise BNSError("a tolerance-ball distillation (ball > 0) runs in one process")
        if cfg.learn == "times":
            for table in params.modules():
                if isinstance(table, BNSParams):
                    table.a.requires_grad_(False)
                    table.b.requires_grad_(False)
        roles: dict[str, list[nn.Parameter]] = {"times": [], "coefs": []}  # one Adam group each (group_lr)
        for name, p in params.named_parameters():
            if p.requires_grad:
                roles["times" if name.endswith("logits") else "coefs"].append(p)
        trained = [p for ps in roles.values() for p in ps]
        opt = torch.optim.Adam([{"params": ps, "role": role} for role, ps in roles.items() if ps], lr=cfg.lr)
        ball = torch.zeros_like(train.noise) if cfg.ball else None
        return cls(field, params, opt, trained, train, val, cfg, world, recomputes(cfg, field), ball)

    def group_lr(self, role: str, state: TrainState) -> float:
        """A parameter group's step size: the schedule's, times `time_lr` for the times, and 0 for the group that
        rests in this phase of an alternating run (S4S-Alt: times, then coefficients, `alternate` iterations each)."""
        cfg = self.cfg
        if cfg.alternate and ("times", "coefs")[(state.iteration // cfg.alternate) % 2] != role:
            return 0.0
        return state.learning_rate(cfg) * (cfg.time_lr if role == "times" else 1.0)

    def step(self, state: TrainState) -> None:
        """One Adam step on the mean log-MSE of a seeded batch of GT pairs through the unrolled loop
        (method.md, the BNS loss); under torchrun each rank takes its share of the batch, and a share larger than
        `micro_batch` is run in micro-batches whose gradients add up to the whole share's; a tolerance-ball run
        takes the loss at its offset noises and moves each offset too (`ball_step`)."""
        cfg, train, world = self.cfg, self.train, self.world
        for group in self.opt.param_groups:
            group["lr"] = self.group_lr(group["role"], state)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.iteration)
        batch = torch.randperm(len(train), generator=g)[: cfg.batch_size]
        idx = batch[world.rank :: world.size].to(train.noise.device)  # this rank's share of the one seeded batch
        self.opt.zero_grad()
        loss = torch.zeros((), dtype=train.noise.dtype, device=train.noise.device)
        for part in idx.split(cfg.micro_batch or max(1, len(idx))):
            shift = None if self.ball is None else self.ball[part].clone().requires_grad_(True)
            x = self.params.sample(self.field, train, part, self.recompute, shift)
            mse = ((x - train.x1[part]) ** 2).flatten(1).mean(1)
            part_loss = torch.log(mse).sum() / len(batch)  # summed over micro-batches and ranks: the batch mean
            part_loss.backward()
            if shift is not None:
                self.ball[part] = ball_step(train.noise[part], shift, cfg.ball)
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


def ball_step(noise: Tensor, shift: Tensor, radius: float) -> Tensor:
    """LD3's relaxed loss (Tong et al. 2025, the soft constraint x'_T in B(x_T, r)): each pair's noise offset steps
    a quarter of its ball's radius against its loss gradient, then is projected back onto the ball of `radius`
    times its noise's norm, so the table is asked to reach each target from some noise near its own."""
    r = radius * noise.flatten(1).norm(dim=1, keepdim=True)
    g = shift.grad.flatten(1)
    moved = shift.detach().flatten(1) - 0.25 * r * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
    moved = moved * (r / moved.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
    return moved.reshape(shift.shape)


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
    if ckpt is not None and ckpt.exists() and not is_checkpoint_file(ckpt):
        raise BNSError(f"{ckpt} exists and is not a checkpoint this tool wrote: move it, or choose another --out")
    if resume and ckpt is not None and ckpt.exists():
        loaded = load_checkpoint(ckpt, params, trainer.opt, state.run_id, trainer.ball)
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
                save_checkpoint(ckpt, params, best, trainer.opt, asdict(state), trainer.ball)
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
    ckpt = checkpoint_path(Path(out)) if out is not None else None
    start = {"init": init.fingerprint()} if warm else {}  # a family's knot starts from its neighbour's table
    run_id = run_identity(cfg=cfg.recipe(), field=field.fingerprint(), train=train.key, val=val.key, **start)
    state = TrainState(run_id=run_id, best_val=init_val)
    elapsed0 = fit(trainer, state, ckpt, resume, progress)
    solver = params.solver(
        name=f"bns-{cfg.nfe}",
        **provenance(field, init, init_val, state, trainer, round(elapsed0 + time.time() - started, 3)),
    )
    if out is not None and world.is_main:
        solver.save(out)
        if ckpt is not None:  # the checkpoint fit wrote (it refuses a file at that path it did not write)
            ckpt.unlink(missing_ok=True)
    world.barrier()
    return solver


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
