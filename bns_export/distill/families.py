"""A guidance family (one table per guidance knot, interpolated between them): the knots distilled in order, each
from its neighbour's table, then trained together so the interpolated tables are trained too."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .. import __version__
from ..errors import BNSError
from ..groundtruth import GTSet
from ..parallel import SINGLE, World
from ..solvers.table import NSSolver, SolverFamily
from .checkpoints import TrainState, checkpoint_path, run_identity
from .config import DistillConfig
from .params import FamilyParams
from .trainer import Trainer, distill, fit


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
        for part in parts:  # knot files this run wrote or took over (a path holding another file was refused)
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
    run_id = run_identity(
        cfg=cfg.recipe(), field=field.fingerprint(), train=train.key, val=val_keys, family=family.fingerprint()
    )
    state = TrainState(run_id=run_id, best_val=start_val, decays=1)  # half the step size: a refinement
    ckpt = None if out is None else checkpoint_path(Path(out))
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
    if ckpt is not None and world.is_main:  # the checkpoint fit wrote (it refuses a file it did not write)
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
