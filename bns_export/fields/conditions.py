"""A condition is a record of named tensors (e.g. encoder_hidden_states (L, D), pooled (P), time_ids (6)),
each with its null value for the unguided branch.

Inside the pipeline (ground truth, distillation, the one sampling loop, guidance) a record travels as
one float tensor per sample: a single condition as it is (B, *shape), several packed flat (B, sum of
sizes) in the layout's order.  At the edges it is unpacked again: the network adapter calls the
model with each tensor by name, and the compiled graph takes one input per name.  Today's single
`cond` is the one-part layout named "cond", so its tensors, fingerprints and artifacts are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LEGACY_NAME = "cond"


@dataclass(frozen=True)
class ConditionPart:
    """One named tensor of a condition: its name and one sample's shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ConditionLayout:
    """The named tensors of a condition, in order; packs a record into the pipeline's one tensor and back."""

    parts: tuple[ConditionPart, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    @property
    def packed(self) -> bool:
        """Several parts travel flat; one part travels in its own shape."""
        return len(self.parts) > 1

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape inside the pipeline."""
        return (sum(p.size for p in self.parts),) if self.packed else self.parts[0].shape

    @property
    def legacy(self) -> bool:
        """Today's single tensor condition, named `cond`."""
        return self.names == (LEGACY_NAME,)

    def pack(self, record: dict[str, Tensor]) -> Tensor:
        """{name: (B, *shape)} -> the pipeline's (B, *self.shape)."""
        if not self.packed:
            return record[self.parts[0].name]
        b = record[self.parts[0].name].shape[0]
        return torch.cat([record[p.name].reshape(b, p.size) for p in self.parts], dim=1)

    def unpack(self, cond: Tensor) -> dict[str, Tensor]:
        """The pipeline's (B, *self.shape) -> {name: (B, *shape)} (views, no copies)."""
        if not self.packed:
            return {self.parts[0].name: cond}
        out, start = {}, 0
        for p in self.parts:
            out[p.name] = cond[:, start : start + p.size].reshape(cond.shape[0], *p.shape)
            start += p.size
        return out

    def describe(self) -> list[dict]:
        return [{"name": p.name, "shape": list(p.shape)} for p in self.parts]
