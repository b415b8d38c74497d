"""Ground truth: adaptive Dormand-Prince RK45 and an on-disk cache of (noise, label, x1) pairs."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checks import integer, number
from .devices import device_of, full_fp32
from .errors import BNSError
from .fileio import atomic_file, cache_root
from .parallel import SINGLE, World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoiseSeeds:
    """The seeds of the disjoint seeded noise sets, in one place: evaluation, distillation's training and
    validation sets, an artifact's parity check, and its conformance vectors."""

    eval: int = 0
    train: int = 1
    val: int = 2
    validate: int = 12345
    conformance: int = 20240601


SEEDS = NoiseSeeds()

# Dormand-Prince 5(4) tableau
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


@dataclass
class ODEResult:
    x: Tensor
    nfe: int
    steps: int
    rejected: int


def dopri5(
    f: Callable[[Tensor, float], Tensor],
    x0: Tensor,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    h0: float | None = None,
    max_steps: int = 100_000,
) -> ODEResult:
    """Integrate dx/dt = f(x, t) from t0 to t1 with adaptive Dormand-Prince 5(4).

    The error norm is the RMS over each sample, maxed over the batch, so every sample meets the
    tolerance.  Uses FSAL: NFE = 1 + 6 per attempted step.
    """
    x, t = x0, float(t0)
    k1 = f(x, t)
    nfe, steps, rejected = 1, 0, 0
    span = t1 - t0
    h = h0 if h0 is not None else 0.01 * span
    while t < t1 - 1e-12 * abs(span):
        if steps + rejected >= max_steps:
            raise BNSError(f"dopri5 took more than {max_steps} steps (reached t={t:.4g}): the ODE is too stiff")
        h = min(h, t1 - t)
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(xi, t + _C[i] * h))
        nfe += 6
        x5 = xi  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks) if b5 != b4)
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        en = ((err / scale) ** 2).flatten(1).mean(1).sqrt().max().item()
        if not math.isfinite(en):
            raise BNSError(f"the model returned NaN or inf between t={t:.4g} and t={t + h:.4g}: no ground truth")
        if en <= 1.0:
            t, x, k1 = t + h, x5, ks[6]
            steps += 1
        else:
            rejected += 1
        factor = 0.9 * (max(en, 1e-10) ** -0.2)
        h = h * min(5.0, max(0.2, factor))
    return ODEResult(x, nfe, steps, rejected)


#: pairs on which a classic reference is checked against dopri5 (its ruler): a few pairs' adaptive solve in
#: place of every pair's
RULER_PAIRS = 8


@dataclass(frozen=True)
class Reference:
    """What the ground truth is solved with: adaptive dopri5 (the default), or, for a model too big for it, a
    fixed-NFE classic solver (`solvers.resolve.classic_reference`): `sample(field, x, condition, nfe, t0, t1)`
    integrates [t0, t1] from x.  A classic reference's own error is measured on RULER_PAIRS pairs against dopri5
    (the set's `ruler`, in dB): a PSNR near or above it measures the reference, not the solver.  (The same solver
    at twice the NFE is no ruler: on digits-text unipc:karras@64 agrees with @128 to 69.5 dB and with dopri5
    to 47.8 dB.)"""

    name: str = "dopri5"
    nfe: int = 0
    sample: Callable | None = None


DOPRI5 = Reference()


@dataclass
class GTSet:
    """Ground-truth pairs: noise (N, *shape), the condition (class labels (N,), condition tensors (N, ...), or
    None), x1 (N, *shape); mean solver NFE; each pair's guidance scale (N,) when the set joins several."""

    noise: Tensor
    condition: Tensor | None
    x1: Tensor
    nfe_mean: float
    key: str
    guidance: Tensor | None = None
    #: a classic reference's measured accuracy (PSNR against dopri5 on RULER_PAIRS pairs), None for dopri5
    ruler: float | None = None

    @classmethod
    def join(cls, sets: dict[float, GTSet]) -> GTSet:
        """One set of the pairs solved at several guidance scales (scale -> set), each pair keeping its scale."""
        parts = list(sets.values())
        scales = [torch.full((len(gt),), float(w), dtype=torch.float64) for w, gt in sets.items()]
        condition = None if parts[0].condition is None else torch.cat([gt.condition for gt in parts])
        return cls(
            torch.cat([gt.noise for gt in parts]),
            condition,
            torch.cat([gt.x1 for gt in parts]),
            sum(gt.nfe_mean * len(gt) for gt in parts) / sum(len(gt) for gt in parts),
            hashlib.sha256("|".join(gt.key for gt in parts).encode()).hexdigest()[:24],
            torch.cat(scales).to(parts[0].noise.device),
        )

    def __len__(self) -> int:
        return self.noise.shape[0]

    def condition_at(self, index) -> Tensor | None:
        """The conditions of the pairs at `index` (a slice or an index tensor), None when unconditional."""
        return None if self.condition is None else self.condition[index]

    @property
    def labels(self) -> Tensor | None:
        """The condition under its earlier name (kept for code written against 0.x)."""
        return self.condition


def make_inputs(field, n: int, seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Seeded noise, and the conditions: uniform class labels, or conditions drawn from the field's
    conditioning set (uniform indices) for a tensor-conditioned field."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((n, *field.sample_shape), generator=g, dtype=torch.float64).to(dtype)
    condition = None
    if field.num_classes:
        condition = torch.randint(0, field.num_classes, (n,), generator=g)
    elif field.cond_shape is not None:
        idx = torch.randint(0, field.cond_set.shape[0], (n,), generator=g)
        condition = field.cond_set.detach().cpu()[idx].to(dtype)
    return noise, condition


def gt_key(
    field, n: int, seed: int, rtol: float, atol: float, dtype: torch.dtype, reference: Reference = DOPRI5
) -> str:
    payload = {
        "field": field.fingerprint(),
        "guidance": float(field.guidance),
        "n": n,
        "seed": seed,
        "rtol": rtol,
        "atol": atol,
        "dtype": str(dtype),
        "shape": list(field.sample_shape),
        "version": 2,  # entries carry their key and digest
    }
    if reference.sample is not None:  # dopri5's keys stay as they were
        payload["reference"] = reference.name
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    return cache_root() / "gt"


def ground_truth(
    field,
    n: int,
    seed: int,
    rtol: float | None = None,
    atol: float | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    world: World = SINGLE,
    reference: Reference = DOPRI5,
) -> GTSet:
    """Solve n seeded pairs to x(t_hi) with dopri5 on the field's device, in batches.  For a segment that starts
    after the model's start (fields.segment), the pairs are (x(t0), x(t1)): the set's `noise` holds x(t0).

    rtol / atol default to the field's `gt_tolerance` (1e-5 unless the model sets a tighter one).

    The noise is drawn on the CPU (the same pairs on every device); the cache holds CPU tensors
    under a device-independent key; the returned set lives on the field's device.  Under torchrun
    the fixed batches are shared out over the ranks and summed back, so the result (and the cache)
    does not depend on the number of processes; rank 0 writes the cache.  Each finished batch of a run of
    several is cached on its own (`<key>.batch-K`), so a killed solve resumes where it stopped.
    """
    n = integer(n, "number of pairs", 1, 10_000_000)
    seed = integer(seed, "seed", 0, 2**63 - 1)
    rtol = number(field.gt_tolerance if rtol is None else rtol, "rtol", 1e-10, 0.1)
    atol = number(field.gt_tolerance if atol is None else atol, "atol", 1e-12, 0.1)
    dtype = dtype or field.default_dtype
    device = device_of(field)
    key = gt_key(field, n, seed, rtol, atol, dtype, reference)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{key}.safetensors"
    cached = read_cached(path, key, n, field, dtype)
    hits = world.all_sum(torch.tensor([float(cached is not None)], device=device))
    if int(hits.item()) == world.size:
        d = cached
        ruler = float(d["ruler"]) if "ruler" in d else None
        return GTSet(*_on(device, d["noise"], d.get("labels"), d["x1"]), float(d["nfe_mean"]), key, ruler=ruler)
    noise, condition = make_inputs(field, n, seed, dtype)
    starts = list(range(0, n, batch_size))
    x1 = torch.zeros((n, *field.sample_shape), dtype=dtype, device=device)
    x0s = torch.zeros_like(x1) if field.lead_in is not None else None  # a segment's x(t0), solved from the noise
    nfes = torch.zeros(len(starts), dtype=torch.float64, device=device)
    parts = [cache / f"{key}.batch-{k}.safetensors" for k in range(len(starts))] if len(starts) > 1 else []
    ours: list[Path] = []  # the batch files this process wrote or proved to be this solve's
    with torch.no_grad(), full_fp32():
        for k in world.mine(range(len(starts))):
            lo = starts[k]
            count = min(batch_size, n - lo)
            shape = (count, *field.sample_shape)
            done = read_batch(parts[k], f"{key}/{k}", shape, dtype, x0s is not None) if parts else None
            if done is None:
                lb = None if condition is None else condition[lo : lo + batch_size].to(device)
                done = _solve(field, noise[lo : lo + batch_size].to(device), lb, rtol, atol, reference)
                if parts and torch.isfinite(done["x1"]).all():
                    write_cached(cache, parts[k], f"{key}/{k}", done)
            if parts:
                ours.append(parts[k])
            x1[lo : lo + batch_size] = done["x1"].to(device)
            if x0s is not None:
                x0s[lo : lo + batch_size] = done["x0"].to(device)
            nfes[k] = float(done["nfe"])
            if progress:
                progress(count)
    x1, nfes = world.all_sum(x1).cpu(), world.all_sum(nfes).cpu()
    if not torch.isfinite(x1).all():
        raise BNSError("ground truth is not finite: the model returns NaN/inf on its interval")
    if x0s is not None:  # a segment's pairs start at x(t0): its samplers start there (Segment.start)
        noise = world.all_sum(x0s).cpu()
    nfe_mean = float(nfes.mean())
    tensors = {"noise": noise.contiguous(), "x1": x1.contiguous(), "nfe_mean": torch.tensor(nfe_mean)}
    ruler = None
    if reference.sample is not None:
        ruler = _ruler(field, noise[:RULER_PAIRS].to(device), condition, x1[:RULER_PAIRS], rtol, atol)
        tensors["ruler"] = torch.tensor(ruler, dtype=torch.float64)
    if condition is not None:
        tensors["labels"] = condition.contiguous()
    if world.is_main:
        write_cached(cache, path, key, tensors)
    world.barrier()
    for part in ours:  # the whole entry replaces the batches: each process removes those it wrote or proved
        part.unlink(missing_ok=True)
    return GTSet(*_on(device, noise, condition, x1), nfe_mean, key, ruler=ruler)


def _ruler(field, x0: Tensor, condition: Tensor | None, x1: Tensor, rtol: float, atol: float) -> float:
    """A classic reference's accuracy on this model: mean PSNR of its solution against dopri5 on a few pairs."""
    from .metrics import psnr_per_sample

    lb = None if condition is None else condition[: x0.shape[0]].to(x0.device)
    with torch.no_grad(), full_fp32():
        exact = dopri5(lambda x, t: field(x, t, lb), field.start(x0), field.t_lo, field.t_hi, rtol, atol).x
    return float(psnr_per_sample(x1.to(exact.device), exact).mean())


def _solve(
    field, noise: Tensor, condition: Tensor | None, rtol: float, atol: float, reference: Reference = DOPRI5
) -> dict[str, Tensor]:
    """One batch's solve over the field's interval, by dopri5 or a classic reference; for a segment that starts
    after the model's start (`lead_in`), from x(t0) solved from the noise first, which the batch carries as x0."""

    def solve(f, x: Tensor, t0: float, t1: float) -> tuple[Tensor, float]:
        if reference.sample is not None:
            return reference.sample(f, x, condition, reference.nfe, t0, t1), float(reference.nfe)
        res = dopri5(lambda x, t: f(x, t, condition), x, t0, t1, rtol, atol)
        return res.x, float(res.nfe)

    lead = field.lead_in
    out = {}
    if lead is None:
        x = field.start(noise)
    else:
        x, _ = solve(lead, lead.start(noise), lead.t_lo, field.t_lo)
        out["x0"] = x.detach().cpu().contiguous()
    x1, nfe = solve(field, x, field.t_lo, field.t_hi)
    return {**out, "x1": x1.detach().cpu().contiguous(), "nfe": torch.tensor(nfe)}


def read_batch(
    path: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype, with_start: bool = False
) -> dict | None:
    """A finished batch of an interrupted solve, if its file proves itself (key, digest, shape, dtype, finite;
    a segment's batch also its x0)."""
    if not path.is_file():
        return None
    meta, d = _load_signed(path)
    fits = d is not None and meta.get("key") == key and set(d) == ({"x0", "x1", "nfe"} if with_start else {"x1", "nfe"})
    states = [d[k] for k in ("x0", "x1") if k in d] if fits else []
    fits = fits and all(tuple(x.shape) == shape and x.dtype == dtype and bool(torch.isfinite(x).all()) for x in states)
    if not fits:
        log.warning(f"ground-truth batch {path.name} is damaged; solving it again")
        return None
    return d


def _load_signed(path: Path) -> tuple[dict, dict | None]:
    """A safetensors file's metadata and tensors, the tensors only when they match the digest it carries
    (({}, None) for a file that does not read)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        d = load_file(str(path))
    except Exception:
        return {}, None
    return meta, (d if meta.get("digest") == tensors_digest(d) else None)


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a cache entry's tensors (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_cached(path: Path, key: str, n: int, field, dtype: torch.dtype) -> dict | None:
    """A cache entry that proves itself (its key and digest, shapes, dtype, finiteness), else None: a damaged
    entry is reported once and recomputed, never trusted; nothing is deleted here (write_cached replaces it)."""
    if not path.is_file():
        return None
    meta, d = _load_signed(path)
    problem = None
    if d is None:
        problem = "not a readable safetensors file, or its digest does not match its contents"
    elif meta.get("key") != key:
        problem = "its key is another entry's"
    elif set(d) - {"noise", "x1", "nfe_mean", "labels", "ruler"} or not {"noise", "x1", "nfe_mean"} <= set(d):
        problem = "unexpected tensors"
    else:
        shape = (n, *field.sample_shape)
        lab = d.get("labels")
        if tuple(d["noise"].shape) != shape or tuple(d["x1"].shape) != shape or d["x1"].dtype != dtype:
            problem = "wrong shapes or dtype"
        elif (lab is None) != (field.num_classes is None and field.cond_shape is None) or (
            lab is not None and lab.shape[0] != n
        ):
            problem = "wrong conditions"
        elif not all(torch.isfinite(t).all() for t in d.values() if t.is_floating_point()):
            problem = "non-finite values"
    if problem is None:
        return d
    log.warning(f"ground-truth cache {path.name}: {problem}; recomputing it (the new entry replaces it)")
    return None


def write_cached(cache: Path, path: Path, key: str, tensors: dict[str, Tensor]) -> None:
    """Store an entry with its key and digest (private, 0600, written atomically); a full or unwritable
    cache only costs recomputation next time: one warning, never a failure."""
    from safetensors.torch import save_file

    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, private=True) as tmp:  # the cache stays private (0600)
            save_file(tensors, tmp, metadata={"key": key, "digest": tensors_digest(tensors), "version": "2"})
    except Exception as e:  # OSError (read-only, ENOSPC) or safetensors' own error for a short write
        log.warning(f"warning: ground truth not cached in {cache} ({str(e).strip().splitlines()[0][:120]})")


def _on(device: torch.device, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    return tuple(None if t is None else t.to(device) for t in tensors)
