"""The one velocity-field interface u(x, t, labels) and classifier-free guidance over it."""

from __future__ import annotations

import functools
import hashlib
import json

import torch
from torch import Tensor, nn

from ..contract import NULL_LABEL  # label value meaning "no class" (the unconditional branch) in a labels tensor
from .schedules import Schedule


def state_digest(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes, bytes): its weights' identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


#: how many weight tensors (evenly spread over the sorted names) a signature samples, besides all of them together
SIGNATURE_TENSORS = 8
#: rounding to bf16 (8 significant bits, the coarsest half precision) moves each weight by at most 2^-9 of itself:
#: the mean and RMS of N weights then move by about 2^-9 / sqrt(N) of their RMS; a signature allows 8x that
ROUNDING = 2.0**-9


def weight_signature(module: nn.Module) -> dict:
    """The weights' identity up to their precision and device: a digest of their layout (names and shapes, no
    dtypes), and the mean and RMS (float64) of every weight together and of SIGNATURE_TENSORS of them, with their
    counts.  The same network in fp16 or bf16 has the same signature within rounding (`same_weights`)."""
    items = sorted(module.state_dict().items())
    layout = hashlib.sha256(json.dumps([[n, list(t.shape)] for n, t in items]).encode()).hexdigest()[:16]
    floats = [t.detach() for _, t in items if t.is_floating_point() and t.numel()]
    picks = [floats[int(i)] for i in torch.linspace(0, len(floats) - 1, min(SIGNATURE_TENSORS, len(floats)))]
    groups = ([floats] if floats else []) + [[t] for t in picks]
    stats, counts = [], []
    for group in groups:
        count = sum(t.numel() for t in group)
        total = sum(float(t.double().sum()) for t in group)
        squares = sum(float(t.double().square().sum()) for t in group)
        stats += [float(f"{total / count:.9g}"), float(f"{(squares / count) ** 0.5:.9g}")]
        counts.append(count)
    return {"layout": layout, "stats": stats, "counts": counts}


def same_weights(a: dict, b: dict) -> bool:
    """Two weight signatures of the same network in any precision: the same layout and counts, and every mean
    and RMS within 8 x ROUNDING / sqrt(count) of the RMS it goes with (bf16's own rounding stays within 0.3 of
    that on the test UNet; weights moved by less than that rounding are indistinguishable from it)."""
    if not isinstance(a, dict) or not isinstance(b, dict) or a.get("layout") != b.get("layout"):
        return False
    sa, sb, counts = a.get("stats") or [], b.get("stats") or [], a.get("counts") or []
    if len(sa) != len(sb) or len(sa) != 2 * len(counts) or counts != b.get("counts"):
        return False
    for i, count in enumerate(counts):
        tol = 8 * ROUNDING / max(1, count) ** 0.5 * max(abs(sa[2 * i + 1]), abs(sb[2 * i + 1]), 1e-30)
        if abs(sa[2 * i] - sb[2 * i]) > tol or abs(sa[2 * i + 1] - sb[2 * i + 1]) > tol:
            return False
    return True


class VelocityField(nn.Module):
    """A velocity field u(x, t, labels) on [t_lo, t_hi], t = 0 noise, t = 1 data (method.md 1).

    Subclasses implement `velocity`.  `labels` is None (unconditional) or an int64 tensor (B,)
    where NULL_LABEL marks samples to evaluate unconditionally.  Every field states its
    schedule (for DDIM/DPM-Solver++ tables and grids), interval, sample shape and class count.
    """

    def __init__(
        self,
        schedule: Schedule,
        sample_shape: tuple[int, ...],
        num_classes: int | None = None,
        t_lo: float | None = None,
        t_hi: float | None = None,
    ) -> None:
        super().__init__()
        self.schedule = schedule
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = num_classes
        self.t_lo = float(schedule.t_lo if t_lo is None else t_lo)
        self.t_hi = float(schedule.t_hi if t_hi is None else t_hi)
        if not 0.0 <= self.t_lo < self.t_hi <= 1.0:
            raise ValueError(f"bad integration interval [{self.t_lo}, {self.t_hi}]")

    def _apply(self, fn, recurse: bool = True):
        """nn.Module's hook behind .to() / .float(): the schedule's tables move with the weights."""
        super()._apply(fn, recurse)
        self.schedule.apply_to_tables(fn)
        return self

    #: shape of one tensor condition (e.g. text embeddings (L, D)) for tensor-conditioned fields, else None
    cond_shape: tuple[int, ...] | None = None
    #: the named tensors of a tensor condition (fields.conditions.ConditionLayout), else None
    condition_layout = None
    #: the guidance scale is fed to the network (Flux-dev's guidance embedding) instead of CFG
    embedded_guidance: bool = False
    #: every spatial size the network takes is a multiple of this (its total downsampling: a convolutional
    #: UNet runs at any such size); None: it runs at its sample shape only (set by the loader)
    size_step: int | None = None
    #: the largest spatial side the network takes (SD3's position embeddings cover that many), else None
    size_limit: int | None = None

    def set_embedded_guidance(self, guidance: float) -> None:
        """Give the network its guidance-embedding input (fields with embedded_guidance only)."""
        raise NotImplementedError(f"{type(self).__name__} has no guidance embedding")

    #: the whole field a segment's ground truth solves x(t0) with first (fields.segment); None: starts from noise
    lead_in = None

    #: dopri5 rtol = atol of this model's ground truth when none is given; a shipped model with a stiff
    #: data end sets a tighter one ("gt_tolerance" in config.json) so its GT ceiling stays far above its PSNRs
    gt_tolerance: float = 1e-5

    @property
    def conditional(self) -> bool:
        """Whether the field takes a condition: class labels (num_classes) or a tensor (cond_shape)."""
        return self.num_classes is not None or self.cond_shape is not None

    def null_condition(self, cond: Tensor) -> Tensor:
        """The unconditional branch's condition, shaped like `cond`: NULL_LABEL labels (tensor fields override)."""
        return torch.full_like(cond, NULL_LABEL)

    # the guidance scale of a plain field is 1 (no guidance)
    guidance: float = 1.0

    def velocity(self, x: Tensor, t: Tensor, condition: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | float, condition: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return self.velocity(x, t, condition)

    @functools.cached_property
    def init_scale(self) -> float:
        """x(t_lo) = init_scale * noise: the path's noise level at the start of the interval (computed
        once, so a traced sampler reads a constant)."""
        return float(self.schedule.sigma(torch.tensor(self.t_lo, dtype=torch.float64)))

    def start(self, noise: Tensor) -> Tensor:
        """x(t_lo) = init_scale * noise for noise ~ N(0, I): where every sampler and the ground truth start."""
        return noise * self.init_scale

    @property
    def default_dtype(self) -> torch.dtype:
        return torch.float32

    def describe(self) -> dict:
        """JSON-able description (without weights); subclasses add their own keys."""
        return self._describe_condition(
            {
                "kind": type(self).__name__,
                "schedule": self.schedule.config(),
                "sample_shape": list(self.sample_shape),
                "num_classes": self.num_classes,
                "interval": [self.t_lo, self.t_hi],
            }
        )

    def _describe_condition(self, d: dict) -> dict:
        if self.cond_shape is not None:  # only then, so label and unconditional fingerprints stay as they were
            d["cond_shape"] = list(self.cond_shape)
        return d

    def weight_digest(self) -> str:
        """sha256 over every parameter and buffer (names, dtypes, shapes, bytes)."""
        return state_digest(self)

    def fingerprint(self) -> str:
        """Short stable id of this field: description + weights (not the guidance scale)."""
        desc = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256((desc + self.weight_digest()).encode()).hexdigest()[:16]

    #: description keys that say where a model came from or what it was conditioned on, not what it computes
    PROVENANCE_KEYS = ("name", "cond_shape", "conditions")

    def network_identity(self) -> str:
        """Short id of what the field computes for a given condition: its description without provenance
        (a folder's name, the condition set) and its network's weights.  A solver file records it, so a
        renamed copy of a folder or another prompt set still fits the solver distilled for that network."""
        desc = {k: v for k, v in self.describe().items() if k not in self.PROVENANCE_KEYS}
        text = json.dumps(desc, sort_keys=True) + self.network_digest()
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def network_digest(self) -> str:
        """sha256 of the weights that define the field (a network field: its network's, not its condition set)."""
        return state_digest(self.network_weights())

    def network_weights(self) -> nn.Module:
        """The module whose weights define the field (a network field: its network, not its condition set)."""
        return self

    def network_signature(self) -> dict:
        """What the field computes up to its network's precision: the description's digest without provenance
        (as network_identity) and the network's weight signature (`weight_signature`)."""
        desc = {k: v for k, v in self.describe().items() if k not in self.PROVENANCE_KEYS}
        return {
            "description": hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16],
            **weight_signature(self.network_weights()),
        }


class GuidedField(nn.Module):
    """Classifier-free guidance u_w = u(x,t,None) + w (u(x,t,c) - u(x,t,None)) in ONE batched call;
    for a field with a guidance embedding (Flux-dev), w is that embedding's input and one plain call.

    w = 1 or labels = None costs a single plain call; otherwise x is duplicated and the field sees
    labels [NULL..., c...], so one NFE is one network call of batch 2B.
    """

    def __init__(self, field: VelocityField, guidance: float = 1.0) -> None:
        super().__init__()
        self.field = field
        #: the field takes w through its guidance embedding: one plain call, no CFG
        self.embedded = isinstance(field, VelocityField) and field.embedded_guidance
        self.set_guidance(guidance)

    def set_guidance(self, guidance: float) -> None:
        """Sample at another scale (a guidance family's knots are distilled on one loaded model)."""
        self.guidance = float(guidance)
        if self.embedded:
            self.field.set_embedded_guidance(self.guidance)

    def forward(
        self, x: Tensor, t: Tensor | float, condition: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor:
        """u_w(x, t, condition); `guidance` (B,) overrides the scale per sample (both branches always run),
        and t may then be one time per sample (B,)."""
        if guidance is None and (condition is None or self.guidance == 1.0 or self.embedded):
            return self.field(x, t, condition)
        if guidance is not None and self.embedded:
            raise ValueError("per-sample guidance needs classifier-free guidance, not a guidance embedding")
        if condition is None:
            raise ValueError("per-sample guidance needs a condition (the conditional branch)")
        null = self.field.null_condition(condition)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        both = self.field(torch.cat([x, x]), t if t.ndim == 0 else torch.cat([t, t]), torch.cat([null, condition]))
        n = x.shape[0]
        u_unc, u_cond = both[:n], both[n:]
        w = self.guidance if guidance is None else guidance.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return u_unc + w * (u_cond - u_unc)

    # delegate the field's description so callers can treat a GuidedField like its field
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("field"), name)
