"""`distill_model`: the one call from a model spec (or a loaded field) to a distilled table or guidance family
written to its file, as `bns-export distill` and the demo run it; `compile_artifact`'s counterpart."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BNSError
from ..groundtruth import SEEDS, GTSet, ground_truth
from ..parallel import SINGLE, World
from ..solvers.table import NSSolver, SolverFamily
from .config import DistillConfig
from .families import distill_family
from .trainer import distill

if TYPE_CHECKING:
    from torch import nn

    from ..fields.segment import SegmentSpec
    from ..loaders import ModelOptions, ModelSpec

#: a progress bar for one ground-truth set: (label, pairs) -> a context whose value takes the pairs done since
GroundTruthBar = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class Pairs:
    """How the ground-truth pairs are made: how many to train and validate on, the dopri5 tolerances (None: the
    model's), the cache folder and a classic reference (`SOLVER:GRID@NFE`) for models too big for dopri5."""

    train: int = 520
    val: int = 1024
    rtol: float | None = None
    atol: float | None = None
    cache_dir: str | None = None
    reference: str | None = None


def check_solver_path(out: str | os.PathLike) -> Path:
    """A solver file to write: NAME.json in a folder that exists (checked before any work)."""
    path = Path(out)
    if path.suffix.lower() != ".json":
        raise BNSError(f"--out {out}: a solver file is JSON; name it NAME.json")
    if not path.parent.exists():
        raise BNSError(f"output folder does not exist: {path.parent}")
    return path


def distill_model(
    model: str | os.PathLike | ModelSpec | nn.Module,
    out: str | os.PathLike,
    cfg: DistillConfig,
    *,
    options: ModelOptions | None = None,
    guidance: float | Sequence[float] | None = None,
    pairs: Pairs = Pairs(),
    sets: tuple[GTSet, GTSet] | None = None,
    segment: SegmentSpec | None = None,
    device: str | None = None,
    network_dtype: str = "fp32",
    resume: bool = True,
    joint: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    ground_truth_bar: GroundTruthBar | None = None,
) -> NSSolver | SolverFamily:
    """Distill a BNS table for `model` at `cfg.nfe` and write it to `out` (NAME.json); return it.

    model: a spec (`digits`, `diffusers:FOLDER`, ...; with `options`, `device`, `network_dtype`) or a loaded
    field.  guidance: one scale, or several knots for a guidance family (one table per knot, then trained
    jointly unless `joint` is False).  sets: (train, val) ground truth already solved, else `pairs` says how to
    solve it.  segment: a fields.segment.SegmentSpec (img2img strength, a refiner's part of the trajectory).
    progress(done, total, text) after every validation (iterations over every stage); ground_truth_bar(label,
    n): a progress bar per ground-truth set.  Under torchrun every rank calls this; rank 0 writes the file.
    """
    from ..devices import resolve_device
    from ..loaders import ModelSpec, load_model
    from ..parallel import init_world
    from ..solvers import parse_spec

    out_path = check_solver_path(out)
    if cfg.base not in ("auto", "paper"):
        parse_spec(cfg.base)
    knots = tuple(float(w) for w in guidance) if isinstance(guidance, (list, tuple)) else None
    if knots is not None and sets is not None:
        raise BNSError("a guidance family solves its own ground truth at every knot; give pairs, not sets")
    if isinstance(model, (str, os.PathLike, ModelSpec)):
        world, dev = init_world(resolve_device(device))
        start = knots[0] if knots else guidance if guidance is not None else 1.0
        field = load_model(str(model) if isinstance(model, os.PathLike) else model, options, start, dev, network_dtype)
    else:
        world, field = SINGLE, model
    if segment is not None:
        from ..fields.segment import Segment

        field = Segment(field, *segment.bounds(field.t_lo, field.t_hi))
    stages = 1 if knots is None else len(knots) + joint
    total = cfg.iterations * stages

    def report(stage: int, it: int, info: dict, at: str = "") -> None:
        if progress is not None:
            text = f"{at}val {info['val_psnr']:.2f} dB (best {info['best_val_psnr']:.2f})"
            progress(stage * cfg.iterations + it, total, text)

    def solve(field) -> tuple[GTSet, GTSet]:
        at = "" if knots is None else f" at w={field.guidance:g}"
        return (
            solve_pairs(field, pairs, pairs.train, SEEDS.train, f"ground truth (train){at}", world, ground_truth_bar),
            solve_pairs(field, pairs, pairs.val, SEEDS.val, f"ground truth (val)  {at}", world, ground_truth_bar),
        )

    if knots is None:
        train, val = sets if sets is not None else solve(field)
        single = lambda it, info: report(0, it, info)  # noqa: E731
        return distill(field, train, val, cfg, out=out_path, resume=resume, progress=single, world=world)

    def knot_report(w: float | None, it: int, info: dict) -> None:
        stage, at = (len(knots), "joint: ") if w is None else (knots.index(w), f"w={w:g}: ")
        report(stage, it, info, at)

    return distill_family(field, knots, solve, cfg, out_path, resume, knot_report, world, joint)


def solve_pairs(
    field, pairs: Pairs, n: int, seed: int, label: str, world: World = SINGLE, bar: GroundTruthBar | None = None
) -> GTSet:
    """One ground-truth set by `pairs`' settings, with a progress bar on rank 0 when the caller gives one."""
    from ..solvers.resolve import classic_reference

    ref = classic_reference(pairs.reference)
    shown = bar(label, n) if bar is not None and world.is_main else contextlib.nullcontext(None)
    with shown as update:
        return ground_truth(
            field, n, seed, pairs.rtol, pairs.atol, cache_dir=pairs.cache_dir, progress=update, world=world,
            reference=ref,
        )  # fmt: skip
