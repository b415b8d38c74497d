"""A part [t0, t1] of a field's interval: what a pipeline runs when it does not sample the whole trajectory.

SDXL's base with `denoising_end` F integrates [t_lo, F]; its refiner with `denoising_start` F, [F, t_hi];
img2img and inpainting at strength S start from x(1 - S), the noised image, and integrate to t_hi.  A
solver table for a segment starts at t0 and ends at t1 (its times say so), and it starts from a state
x(t0), not from noise: the ground truth of a segment that starts after t_lo first solves the whole
field from noise to t0 (`lead_in`), so its pairs are (x(t0), x(t1)) of one exact trajectory.  That x(t0)
is a sample of the marginal at t0, the distribution a noised image (img2img) or a base model's latents
(a refiner) come from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import BNSError

#: how close a table's end must be to a segment's to be that segment's table
TOLERANCE = 1e-6


@dataclass(frozen=True)
class SegmentSpec:
    """A segment as the user names it: an interval T0:T1 in the field's time (0 noise, 1 data), an img2img
    strength S (from 1 - S to the end), a denoising_end F (from the start to F) or a denoising_start F (F to
    the end), F as diffusers' pipelines take it (the fraction of the denoising done)."""

    kind: str  # interval, strength, end, start
    values: tuple[float, ...]

    @classmethod
    def parse(
        cls,
        interval: str | None = None,
        strength: float | None = None,
        denoising_end: float | None = None,
        denoising_start: float | None = None,
    ) -> SegmentSpec | None:
        """The one parser of --interval / --strength / --denoising-end / --denoising-start (at most one given)."""
        given = [(k, v) for k, v in (("interval", interval), ("strength", strength), ("end", denoising_end),
                                     ("start", denoising_start)) if v is not None]  # fmt: skip
        if not given:
            return None
        if len(given) > 1:
            raise BNSError("give one of --interval, --strength, --denoising-end and --denoising-start")
        kind, value = given[0]
        if kind == "interval":
            parts = str(value).split(":")
            try:
                t0, t1 = (float(p) for p in parts) if len(parts) == 2 else (None, None)
            except ValueError:
                t0 = t1 = None
            if t0 is None or not (0.0 <= t0 < t1 <= 1.0):
                raise BNSError(f"--interval {value}: give T0:T1 with 0 <= T0 < T1 <= 1 (0 is noise, 1 data)")
            return cls(kind, (t0, t1))
        if not 0.0 < float(value) <= 1.0 or (kind != "strength" and float(value) == 1.0):
            flag = {"strength": "--strength", "end": "--denoising-end", "start": "--denoising-start"}[kind]
            raise BNSError(f"{flag} {value}: must lie in (0, 1{']' if kind == 'strength' else ')'}")
        return cls(kind, (float(value),))

    def bounds(self, t_lo: float, t_hi: float) -> tuple[float, float]:
        """[t0, t1] within a field's [t_lo, t_hi], or one line when the segment leaves it or is empty."""
        if self.kind == "interval":
            t0, t1 = self.values
        elif self.kind == "strength":
            t0, t1 = max(t_lo, 1.0 - self.values[0]), t_hi
        elif self.kind == "end":
            t0, t1 = t_lo, self.values[0]
        else:
            t0, t1 = self.values[0], t_hi
        if not (t_lo - TOLERANCE <= t0 < t1 <= t_hi + TOLERANCE):
            raise BNSError(f"the segment [{t0:g}, {t1:g}] is not inside the model's interval [{t_lo:g}, {t_hi:g}]")
        return max(t0, t_lo), min(t1, t_hi)


class Segment(nn.Module):
    """A (guided) field on [t0, t1] within its interval; everything else is the field's (see module docstring).

    `start` takes the states at t0 (noise only when t0 is the field's own start); `lead_in` is the whole field
    when the segment starts later, so the ground truth solves x(t0) from noise first."""

    def __init__(self, field: nn.Module, t0: float, t1: float) -> None:
        super().__init__()
        self.field = field
        if not (field.t_lo - TOLERANCE <= t0 < t1 <= field.t_hi + TOLERANCE):
            raise BNSError(f"the segment [{t0:g}, {t1:g}] is not inside [{field.t_lo:g}, {field.t_hi:g}]")
        self.t_lo, self.t_hi = float(t0), float(t1)

    @property
    def lead_in(self) -> nn.Module | None:
        """The whole field, when the segment starts after its start (x(t0) is solved from noise), else None."""
        return self.field if self.t_lo > self.field.t_lo + TOLERANCE else None

    def start(self, x: Tensor) -> Tensor:
        """x(t0): the given states, or the field's own start from noise when t0 is the field's start."""
        return x if self.lead_in is not None else self.field.start(x)

    def forward(self, *args, **kwargs) -> Tensor:
        return self.field(*args, **kwargs)

    def describe(self) -> dict:
        return {**self.field.describe(), "interval": [self.t_lo, self.t_hi]}

    def fingerprint(self) -> str:
        """The field's fingerprint and the segment: ground truths of two segments never share a cache entry."""
        text = f"{self.field.fingerprint()}|segment {self.t_lo!r} {self.t_hi!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("field"), name)
