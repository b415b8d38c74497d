"""Solver specs, parsed in one place: a classic solver name with an optional grid, or a solver file.

`euler`, `heun:karras`, `dpm++2m:logsnr` name a classic table built at the requested NFE;
anything that names an existing path is a solver file, which carries its own NFE and guidance (one table)
or guidance range (a family, interpolated at the guidance asked for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import BNSError
from ..fields.field import same_weights
from ..groundtruth import DOPRI5, Reference
from .classic import BASELINES
from .general import scale_time
from .grids import GRIDS, make_grid
from .table import NSSolver, SolverFamily, Table, load_solver

DEFAULT_NFE = 8


@dataclass(frozen=True)
class SolverSpec:
    """A parsed spec: a classic solver (`name`, `grid` or None for its default) or a solver file's `table`
    (one table or a guidance family; read once, at parse time, with the `path` it came from; None for a
    table given in memory)."""

    name: str | None = None
    grid: str | None = None
    path: Path | None = None
    table: Table | None = None

    @property
    def is_file(self) -> bool:
        return self.table is not None

    @property
    def family(self) -> SolverFamily | None:
        """The guidance family a solver file holds (None for one table or a classic solver)."""
        return self.table if isinstance(self.table, SolverFamily) else None

    @property
    def source(self) -> str:
        """How to name the spec in a message."""
        if self.path is not None:
            return str(self.path)
        if self.table is not None:
            return self.table.name
        return self.name if self.grid is None else f"{self.name}:{self.grid}"


#: what the API takes as a solver: a spec string, a parsed spec, a table or a guidance family
SolverLike = str | SolverSpec | NSSolver | SolverFamily


def parse_spec(spec: SolverLike) -> SolverSpec:
    """Parse `spec` once, reading a solver file here; an unknown name or grid, or a folder, is one clear error."""
    if isinstance(spec, SolverSpec):
        return spec
    if isinstance(spec, (NSSolver, SolverFamily)):
        return SolverSpec(table=spec)
    if not isinstance(spec, str) or not spec:
        raise BNSError("a solver spec must be a classic solver name or a solver file")
    p = Path(spec)
    if p.is_dir():
        raise BNSError(f"solver {spec!r} is a directory, not a solver file")
    if p.exists():
        return SolverSpec(path=p, table=load_solver(p))
    name, _, grid = spec.partition(":")
    if name not in BASELINES:
        raise BNSError(f"unknown solver {spec!r}: not a file and not one of {', '.join(BASELINES)}")
    if grid and grid not in GRIDS:
        raise BNSError(f"unknown time grid {grid!r} in {spec!r}; choose one of {', '.join(GRIDS)}")
    return SolverSpec(name=name, grid=grid or None)


def guidance_for(spec: SolverLike | None, guidance: float | None) -> float:
    """The guidance to run a solver at: the one asked for, else the solver file's, else 1 (none)."""
    if guidance is not None:
        return guidance
    g = solver_guidance(spec)
    return 1.0 if g is None else g


def solver_guidance(spec: SolverLike | None) -> float | None:
    """The guidance a solver file was distilled at (None for a classic solver, a family or a file without one)."""
    if spec is None or spec == "":
        return None
    parsed = parse_spec(spec)
    if not parsed.is_file:
        return None
    g = parsed.table.meta.get("guidance")
    return None if g is None else float(g)


def baseline(
    spec: SolverLike, nfe: int, schedule, t_lo: float, t_hi: float, precondition: float | None = None
) -> NSSolver:
    """The NS table of a classic solver at `nfe` evaluations, e.g. "rk4", "heun:karras".

    precondition (sigma_0): run the solver on the scale-time transformed path whose source has
    std sigma_0 (method.md section 3); exact for FM-OT fields, a valid NS solver for any field.
    """
    parsed = parse_spec(spec)
    if parsed.is_file:
        raise BNSError(f"{parsed.source!r} is a solver file, not a classic solver name")
    spec = parsed.source
    name, entry = parsed.name, BASELINES[parsed.name]
    grid = parsed.grid or entry.grid
    if nfe < entry.nfe_per_step or nfe % entry.nfe_per_step:
        raise BNSError(
            f"{name} uses {entry.nfe_per_step} NFE per step: NFE {nfe} is not a multiple of {entry.nfe_per_step}"
        )
    m = nfe // entry.nfe_per_step
    meta = {"base_solver": f"{name}:{grid}"}
    if precondition is None:
        return entry.build(make_grid(grid, m, schedule, t_lo, t_hi), schedule).to_ns(name=spec, **meta)
    if entry.needs_schedule:
        raise BNSError(f"preconditioning applies to the time-stepping solvers, not {name}")
    s0 = float(precondition)
    if not (math.isfinite(s0) and s0 > 0):
        raise BNSError(f"preconditioning sigma_0 must be a positive number, got {precondition}")
    span = t_hi - t_lo
    # FM-OT: xbar_r = (1 - r) sigma_0 z + r x1 => t_r = r / (r + (1 - r) sigma_0), s_r = r + (1 - r) sigma_0;
    # the base solver steps uniformly in r
    g = scale_time(
        lambda T: entry.build(T, schedule),
        make_grid("uniform", m, schedule, 0.0, 1.0),
        t_of_r=lambda r: t_lo + span * r / (r + (1 - r) * s0),
        s_of_r=lambda r: r + (1 - r) * s0,
        dt_dr=lambda r: span * s0 / (r + (1 - r) * s0) ** 2,
        ds_dr=lambda r: np.full_like(r, 1 - s0),
    )
    meta["base_solver"] = f"{name}:uniform"
    meta["precondition_sigma0"] = s0
    return g.to_ns(name=f"{name}@sigma0={s0:g}", **meta)


def resolve_solver(spec: SolverLike, field, nfe: int | None = None) -> NSSolver:
    """A classic solver at `nfe` (default 8), or a solver file (or table) checked against the model; a
    family gives its table at the field's guidance."""
    parsed = parse_spec(spec)
    table = resolve_table(parsed, field, nfe)
    if isinstance(table, NSSolver):
        return table
    lo, hi = table.guidance_range
    if not lo <= float(field.guidance) <= hi:
        raise BNSError(
            f"{parsed.source}: a guidance family over {lo:g}..{hi:g}; guidance {float(field.guidance):g} is outside "
            "it (pass -w in that range)"
        )
    return table.at(float(field.guidance))


def resolve_table(spec: SolverLike, field, nfe: int | None = None) -> Table:
    """resolve_solver, but a family stays a family (the compiled graph interpolates it per sample)."""
    parsed = parse_spec(spec)
    if not parsed.is_file:
        return baseline(parsed, nfe or DEFAULT_NFE, field.schedule, field.t_lo, field.t_hi)
    check_solver_fits(parsed.table, field, nfe, source=parsed.source)
    return parsed.table


def same_network(solver: Table, field) -> bool:
    """The solver's network in another precision or on another device (an fp16 or bf16 pipeline of the fp32
    network it was distilled for): the same description and weight signature (fields.field.same_weights)."""
    recorded, ours = solver.meta.get("model_signature"), field.network_signature()
    return (
        isinstance(recorded, dict)
        and recorded.get("description") == ours["description"]
        and same_weights(recorded, ours)
    )


def check_solver_fits(
    solver: Table, field, nfe: int | None = None, source: str = "solver", check_guidance: bool = True
) -> None:
    """Refuse a solver distilled for another network (its schedule and weights, not its folder's name or
    condition set), guidance (unless check_guidance=False: a pipeline decides it per call), interval or NFE."""
    if nfe is not None and nfe != solver.nfe:
        raise BNSError(f"{source}: NFE mismatch: the solver has {solver.nfe} NFE, {nfe} requested")
    identity = solver.meta.get("model_identity")  # the network and its schedule (newer files)
    fp = solver.meta.get("model_fingerprint")  # description + every weight, condition set included
    if identity is not None and identity != field.network_identity() and not same_network(solver, field):
        raise BNSError(
            f"{source}: model mismatch: solver was distilled for network {identity}, "
            f"this one is {field.network_identity()}"
        )
    if identity is None and fp is not None and fp != field.fingerprint():
        raise BNSError(
            f"{source}: model mismatch: solver was distilled for model {fp}, this model is {field.fingerprint()}"
        )
    g = solver.meta.get("guidance")
    if check_guidance and g is not None and float(g) != float(field.guidance):
        raise BNSError(
            f"{source}: guidance mismatch: solver was distilled at guidance {g}, sampling at {field.guidance}"
        )
    if abs(solver.t[0] - field.t_lo) > 1e-9 or abs(solver.t_end - field.t_hi) > 1e-9:
        inside = field.t_lo - 1e-9 <= solver.t[0] and solver.t_end <= field.t_hi + 1e-9
        raise BNSError(
            f"{source}: interval mismatch: solver runs [{solver.t[0]:g}, {solver.t_end:g}], "
            f"model integrates [{field.t_lo:g}, {field.t_hi:g}]"
            + (
                " (a table for a segment of it, for a pipeline's denoising_end or denoising_start or img2img, runs "
                "there under eval and BNSScheduler; compile and sample take tables for the whole interval)"
                if inside
                else ""
            )
        )


#: the largest NFE a classic reference may take (its ruler runs twice that)
MAX_REFERENCE_NFE = 4096


def classic_reference(text: str | None) -> Reference:
    """`--reference`: `dopri5` (the default, adaptive) or `SOLVER[:GRID]@NFE`, a classic solver at a fixed high
    NFE, the ground truth a big model can afford (groundtruth.Reference; its error is reported as a ruler)."""
    if text is None or text == "dopri5":
        return DOPRI5
    spec, at, count = str(text).rpartition("@")
    parsed = parse_spec(spec) if at and spec else None
    if parsed is None or parsed.is_file:
        raise BNSError(f"--reference {text}: give dopri5 or a classic solver and its NFE, e.g. dpm++2m:karras@64")
    try:
        nfe = int(count)
    except ValueError:
        nfe = 0
    if not 2 <= nfe <= MAX_REFERENCE_NFE:
        raise BNSError(f"--reference {text}: the NFE must be an integer in [2, {MAX_REFERENCE_NFE}]")

    def run(field, x: Tensor, condition: Tensor | None, n: int, t0: float, t1: float) -> Tensor:
        from .sampler import ns_sample, solver_tensors

        t, a, b = solver_tensors(baseline(parsed, n, field.schedule, t0, t1), x.dtype, x.device)
        return ns_sample(field, t, a, b, x, condition)

    return Reference(f"{parsed.name}:{parsed.grid or ''}@{nfe}", nfe, run)
