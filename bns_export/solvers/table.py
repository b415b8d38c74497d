"""The NS solver table (t, a, b) and its versioned JSON file format.

x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u(x_j, t_j); the sample is x_n, reached at t_end.
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
        self.t = np.asarray(self.t, dtype=np.float64)
        self.a = np.asarray(self.a, dtype=np.float64)
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
        """Write atomically (temporary file, then rename)."""
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

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
        """Read and check a solver file (size, JSON, types, lengths, finiteness, fingerprint)."""
        return cls.from_json(read_json(path, "solver file", MAX_SOLVER_BYTES), source=str(path))


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


#: types of the provenance fields this tool reads back (other fields are kept as they are)
META_CHECKS = {
    "guidance": lambda v, k: guidance_scale(v, k),
    "model_fingerprint": _text,
    "model_identity": _text,
    "kind": _text,
    "base_solver": _text,
    "world_size": lambda v, k: integer(v, k, 1),
}


def _round(arr: np.ndarray) -> list[float]:
    return [float(f"{x:.15g}") for x in np.asarray(arr).ravel()]
