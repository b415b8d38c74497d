"""The NS solver table (t, a, b), a family of tables over guidance, and their versioned JSON file format.

x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u(x_j, t_j); the sample is x_n, reached at t_end.  Version 1 files
hold one table; version 2 files a guidance family (tables at knots, interpolated between them).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import guidance_scale, integer, number, read_json
from ..errors import BNSError
from ..fileio import atomic_write_text

SCHEMA = "bns-export/solver"
SCHEMA_VERSION = 1
FAMILY_VERSION = 2
MAX_NFE = 1024
MAX_SOLVER_BYTES = 1 << 20  # a 64-NFE table is about 60 kB


@dataclass
class NSSolver:
    """An n-NFE non-stationary solver: times t (n), a (n), lower-triangular b (n x n), t_end.

    Times may repeat (Heun and RK4 evaluate twice at one time) but never decrease.  `meta`
    carries provenance (base solver, training PSNR, model fingerprint, ...) into the file.
    """

    t: np.ndarray
    a: np.ndarray
    b: np.ndarray
    t_end: float
    name: str = "ns"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # copies: a table owns its numbers (an array handed in may be a view of a tensor that trains on)
        self.t = np.array(self.t, dtype=np.float64)
        self.a = np.array(self.a, dtype=np.float64)
        self.b = np.tril(np.asarray(self.b, dtype=np.float64))
        self.t_end = float(self.t_end)
        check_table(self.t, self.a, self.b, self.t_end)

    @property
    def nfe(self) -> int:
        return int(self.t.shape[0])

    @property
    def num_params(self) -> int:
        """Free numbers: n - 1 times (t_0 fixed), n values of a, n(n+1)/2 of b."""
        n = self.nfe
        return (n - 1) + n + n * (n + 1) // 2

    def fingerprint(self) -> str:
        """sha256 of the numbers (rounded to 15 significant digits), 16 hex chars."""
        payload = json.dumps(
            [_round(self.t), _round(self.a), [_round(r) for r in self.rows()], float(f"{self.t_end:.15g}")]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def rows(self) -> list[np.ndarray]:
        return [self.b[i, : i + 1] for i in range(self.nfe)]

    def to_json(self) -> dict:
        d = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "nfe": self.nfe,
            "times": self.t.tolist(),
            "t_end": self.t_end,
            "a": self.a.tolist(),
            "b": [r.tolist() for r in self.rows()],
            "fingerprint": self.fingerprint(),
        }
        d.update(self.meta)
        return d

    def save(self, path: str | os.PathLike) -> None:
        write_solver(self, path)

    @classmethod
    def from_json(cls, d: dict, source: str = "solver") -> NSSolver:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise BNSError(f"{source}: not a bns-export solver file (missing schema {SCHEMA!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise BNSError(
                f"{source}: unknown schema version {d.get('schema_version')!r} "
                f"(this tool reads version {SCHEMA_VERSION})"
            )
        missing = [k for k in ("nfe", "times", "t_end", "a", "b") if k not in d]
        if missing:
            raise BNSError(f"{source}: malformed solver file (missing {', '.join(missing)})")
        try:
            n = integer(d["nfe"], "nfe", 1, MAX_NFE)
            t = _floats(d["times"], "times")
            a = _floats(d["a"], "a")
            rows = d["b"]
            t_end = number(d["t_end"], "t_end")
            for key, check in META_CHECKS.items():
                if d.get(key) is not None:
                    check(d[key], key)
        except BNSError as e:
            raise BNSError(f"{source}: {e}") from None
        if len(t) != n or len(a) != n or not isinstance(rows, list) or len(rows) != n:
            raise BNSError(
                f"{source}: wrong lengths: nfe={n} but {len(t)} times, {len(a)} a, "
                f"{len(rows) if isinstance(rows, list) else '?'} rows of b"
            )
        b = np.zeros((n, n))
        for i, r in enumerate(rows):
            try:
                r = _floats(r, f"b[{i}]")
            except BNSError as e:
                raise BNSError(f"{source}: {e}") from None
            if len(r) != i + 1:
                raise BNSError(f"{source}: wrong lengths: row b[{i}] has {len(r)} values, expected {i + 1}")
            b[i, : i + 1] = r
        meta = {
            k: v
            for k, v in d.items()
            if k not in {"schema", "schema_version", "name", "nfe", "times", "t_end", "a", "b", "fingerprint"}
        }
        try:
            solver = cls(t, a, b, t_end, name=str(d.get("name", "ns")), meta=meta)
        except BNSError as e:
            raise BNSError(f"{source}: {e}") from None
        if "fingerprint" in d and d["fingerprint"] != solver.fingerprint():
            raise BNSError(
                f"{source}: stale fingerprint: the file says {d['fingerprint']!r}, its numbers hash to "
                f"{solver.fingerprint()!r} (edited by hand or corrupted)"
            )
        return solver

    @classmethod
    def load(cls, path: str | os.PathLike) -> NSSolver:
        """Read and check a one-table solver file (size, JSON, types, lengths, finiteness, fingerprint)."""
        table = load_solver(path)
        if not isinstance(table, NSSolver):
            raise BNSError(f"{path}: a guidance family, not one table: pick its guidance with -w")
        return table


@dataclass
class SolverFamily:
    """NS tables of one NFE distilled at increasing guidance knots w_0 < ... < w_K-1.  At w in [w_0, w_K-1]
    every number is interpolated linearly between the two knots around it: table(w) = T_0 + sum_j s_j(w)
    (T_j+1 - T_j) with s_j = clamp((w - w_j) / (w_j+1 - w_j), 0, 1), the form the compiled graph computes.
    Times stay non-decreasing and keep their ends: a convex combination of such sequences is one."""

    knots: np.ndarray
    tables: list[NSSolver]
    name: str = "bns-family"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.knots = np.asarray(self.knots, dtype=np.float64)
        if self.knots.ndim != 1 or len(self.knots) < 2 or len(self.tables) != len(self.knots):
            raise BNSError(f"a guidance family needs two or more knots, one table each ({len(self.tables)} tables)")
        for w in self.knots:
            guidance_scale(float(w), "family knot")
        if np.any(np.diff(self.knots) <= 0):
            raise BNSError(f"family knots must increase, got {self.knots.tolist()}")
        first = self.tables[0]
        for w, table in zip(self.knots, self.tables):
            if table.nfe != first.nfe or table.t[0] != first.t[0] or table.t_end != first.t_end:
                raise BNSError(
                    f"the family's table at guidance {w:g} has NFE {table.nfe} on [{table.t[0]:g}, {table.t_end:g}], "
                    f"the first NFE {first.nfe} on [{first.t[0]:g}, {first.t_end:g}]: one NFE and interval only"
                )

    @property
    def nfe(self) -> int:
        return self.tables[0].nfe

    @property
    def t(self) -> np.ndarray:
        """The start and end times every table shares (t[0] and t_end are what interval checks read)."""
        return self.tables[0].t

    @property
    def t_end(self) -> float:
        return self.tables[0].t_end

    @property
    def guidance_range(self) -> tuple[float, float]:
        return float(self.knots[0]), float(self.knots[-1])

    @property
    def num_params(self) -> int:
        return sum(t.num_params for t in self.tables)

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every knot's (t, a, b): (K, n), (K, n), (K, n, n)."""
        return tuple(np.stack([getattr(table, k) for table in self.tables]) for k in ("t", "a", "b"))

    def weights(self, guidance: float) -> np.ndarray:
        """s_j(w) for the K - 1 intervals (1 for intervals below w, 0 above, the fraction inside)."""
        k = self.knots
        return np.clip((guidance - k[:-1]) / (k[1:] - k[:-1]), 0.0, 1.0)

    def at(self, guidance: float) -> NSSolver:
        """The interpolated table at `guidance` (within the knots), recording that guidance."""
        lo, hi = self.guidance_range
        g = guidance_scale(guidance)
        if not lo <= g <= hi:
            raise BNSError(f"guidance {g:g} is outside the solver family's range {lo:g}..{hi:g}")
        s = self.weights(g)
        t, a, b = (v[0] + np.tensordot(s, np.diff(v, axis=0), axes=1) for v in self.stacked())
        t[0] = self.t[0]  # exactly the shared start, whatever the rounding
        meta = {**self.meta, "guidance": g, "family_fingerprint": self.fingerprint()}
        return NSSolver(t, a, b, self.t_end, name=f"{self.name}@w={g:g}", meta=meta)

    def fingerprint(self) -> str:
        """sha256 of the knots and every table's numbers, 16 hex chars."""
        payload = json.dumps([_round(self.knots), [t.fingerprint() for t in self.tables]])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        d = {
            "schema": SCHEMA,
            "schema_version": FAMILY_VERSION,
            "name": self.name,
            "nfe": self.nfe,
            "t_end": self.t_end,
            "family": {
                "parameter": "guidance",
                "knots": self.knots.tolist(),
                "tables": [
                    {k: v for k, v in t.to_json().items() if k not in ("schema", "schema_version")} for t in self.tables
                ],
            },
            "fingerprint": self.fingerprint(),
        }
        d.update(self.meta)
        return d

    def save(self, path: str | os.PathLike) -> None:
        write_solver(self, path)

    @classmethod
    def from_json(cls, d: dict, source: str = "solver") -> SolverFamily:
        fam = d.get("family")
        if not isinstance(fam, dict) or fam.get("parameter") != "guidance":
            raise BNSError(f"{source}: a version-2 solver file needs a guidance 'family'")
        knots, tables = fam.get("knots"), fam.get("tables")
        if not isinstance(knots, list) or not isinstance(tables, list) or len(knots) != len(tables):
            raise BNSError(f"{source}: the family needs a list of knots and one table per knot")
        if len(tables) > 64:
            raise BNSError(f"{source}: {len(tables)} tables, more than the 64 a family may have")
        try:
            knots = [number(k, "family knot") for k in knots]
        except BNSError as e:
            raise BNSError(f"{source}: {e}") from None
        parsed = []
        for w, table in zip(knots, tables):
            entry = {**table, "schema": SCHEMA, "schema_version": SCHEMA_VERSION} if isinstance(table, dict) else table
            parsed.append(NSSolver.from_json(entry, source=f"{source} (table at guidance {w:g})"))
        meta = {
            k: v
            for k, v in d.items()
            if k not in {"schema", "schema_version", "name", "nfe", "t_end", "family", "fingerprint"}
        }
        try:
            family = cls(knots, parsed, name=str(d.get("name", "bns-family")), meta=meta)
        except BNSError as e:
            raise BNSError(f"{source}: {e}") from None
        if "fingerprint" in d and d["fingerprint"] != family.fingerprint():
            raise BNSError(
                f"{source}: stale fingerprint: the file says {d['fingerprint']!r}, its numbers hash to "
                f"{family.fingerprint()!r} (edited by hand or corrupted)"
            )
        return family


#: a solver file's contents: one table, or a family over guidance
Table = NSSolver | SolverFamily

#: schema version -> the record it holds (read in one place)
FILE_VERSIONS = {SCHEMA_VERSION: NSSolver, FAMILY_VERSION: SolverFamily}


def solver_from_json(d: dict, source: str = "solver") -> Table:
    """A solver file's record: version 1 a table, version 2 a guidance family."""
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise BNSError(f"{source}: not a bns-export solver file (missing schema {SCHEMA!r})")
    version = d.get("schema_version")
    kind = FILE_VERSIONS.get(version) if type(version) is int else None  # not a list, a bool or 1.0
    if kind is None:
        raise BNSError(
            f"{source}: unknown schema version {d.get('schema_version')!r} "
            f"(this tool reads versions {', '.join(map(str, FILE_VERSIONS))})"
        )
    return kind.from_json(d, source)


def write_solver(table: Table, path: str | os.PathLike) -> None:
    """Write a solver file atomically (temporary file, then rename)."""
    atomic_write_text(Path(path), json.dumps(table.to_json(), indent=2) + "\n")


def load_solver(path: str | os.PathLike) -> Table:
    """Read and check a solver file of either version (size, JSON, types, lengths, finiteness, fingerprint)."""
    return solver_from_json(read_json(path, "solver file", MAX_SOLVER_BYTES), source=str(path))


def check_table(t: np.ndarray, a: np.ndarray, b: np.ndarray, t_end: float) -> None:
    """Raise BNSError naming the first problem of a table."""
    n = t.shape[0]
    if n < 1 or t.ndim != 1:
        raise BNSError("solver needs at least one time")
    if a.shape != (n,) or b.shape != (n, n):
        raise BNSError(f"wrong lengths: {n} times, a {a.shape}, b {b.shape}")
    for name, arr in (("times", t), ("a", a), ("b", b)):
        if not np.all(np.isfinite(arr)):
            raise BNSError(f"solver {name} contain NaN or inf")
    if not math.isfinite(t_end):
        raise BNSError("solver t_end is NaN or inf")
    if np.any(np.diff(np.append(t, t_end)) < 0) or t_end <= t[0]:
        raise BNSError("solver times must be non-decreasing and end after they start")


def _floats(v, what: str) -> list[float]:
    if not isinstance(v, list):
        raise BNSError(f"{what} must be a list of numbers")
    if len(v) > MAX_NFE:
        raise BNSError(f"{what} has {len(v)} entries, more than the {MAX_NFE} a solver may have")
    return [number(x, what) for x in v]


def _text(v, what: str) -> str:
    if not isinstance(v, str):
        raise BNSError(f"{what} must be a string, got {v!r}")
    return v


def _signature(v, what: str) -> dict:
    """A weight signature (fields.field.network_signature): two digests and at most 64 finite numbers."""
    stats = v.get("stats") if isinstance(v, dict) else None
    if not (
        isinstance(v, dict)
        and all(isinstance(v.get(k), str) and len(v[k]) <= 64 for k in ("description", "layout"))
        and isinstance(stats, list)
        and len(stats) <= 64
    ):
        raise BNSError(f"{what} must be a weight signature {{description, layout, stats}}, got {str(v)[:80]!r}")
    for x in stats:
        number(x, f"{what} statistic")
    for c in v.get("counts") or []:
        integer(c, f"{what} count", 1)
    return v


#: types of the provenance fields this tool reads back (other fields are kept as they are)
META_CHECKS = {
    "guidance": lambda v, k: guidance_scale(v, k),
    "model_fingerprint": _text,
    "model_identity": _text,
    "model_signature": lambda v, k: _signature(v, k),
    "kind": _text,
    "base_solver": _text,
    "world_size": lambda v, k: integer(v, k, 1),
}


def _round(arr: np.ndarray) -> list[float]:
    return [float(f"{x:.15g}") for x in np.asarray(arr).ravel()]
