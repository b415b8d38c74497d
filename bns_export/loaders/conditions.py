"""Condition sets: the safetensors files that ground-truth pairs draw their conditions from.

One entry per name: `NAME` (N, *shape) holds N conditions of that name, `null.NAME` (*shape) its
value for the unguided branch (default zeros).  Record k is the k-th row of every entry, drawn whole.
Today's files, `cond` (N, ...) with an optional `null`, are the one-name set named `cond`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import BNSError
from ..fields.conditions import LEGACY_NAME, ConditionLayout, ConditionPart

NULL_PREFIX = "null."
MAX_NAMES = 16


@dataclass
class ConditionSet:
    """N condition records in the pipeline's one-tensor form, their null record and their layout."""

    cond: Tensor  # (N, *layout.shape)
    null: Tensor  # (*layout.shape)
    layout: ConditionLayout

    def record(self, name: str) -> Tensor:
        """One name's (N, *shape) tensor."""
        return self.layout.unpack(self.cond)[name]


def condition_set(
    entries: dict[str, Tensor], nulls: dict[str, Tensor], order: list[str] | None = None, where: str = "condition set"
) -> ConditionSet:
    """Check and pack named (N, *shape) entries and their nulls (missing nulls are zeros) into a ConditionSet."""
    names = order or sorted(entries)
    if not names:
        raise BNSError(f"{where} holds no conditions")
    if len(names) > MAX_NAMES:
        raise BNSError(f"{where} holds {len(names)} condition names; at most {MAX_NAMES}")
    n = None
    parts, record, null_record = [], {}, {}
    for name in names:
        t = entries[name]
        if not t.is_floating_point() or t.ndim < 2 or min(t.shape) < 1 or not torch.isfinite(t).all():
            raise BNSError(
                f"{where}: {name!r} must be finite floats of shape (N, ...) with no empty axis, got {t.dtype} "
                f"{tuple(t.shape)}"
            )
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise BNSError(f"{where}: {name!r} holds {t.shape[0]} conditions, {names[0]!r} {n}: one row per record")
        shape = tuple(t.shape[1:])
        null = nulls.get(name)
        if null is None:
            null = torch.zeros(shape)
        if tuple(null.shape) != shape or not torch.isfinite(null).all():
            raise BNSError(f"{where}: the null of {name!r} must be finite with shape {shape}, got {tuple(null.shape)}")
        parts.append(ConditionPart(name, shape))
        record[name], null_record[name] = t.float(), null.float()[None]
    layout = ConditionLayout(tuple(parts))
    return ConditionSet(layout.pack(record), layout.pack(null_record)[0], layout)


def load_condition_set(path: str | Path) -> ConditionSet:
    """The condition records of a safetensors file (see the module docstring)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise BNSError(f"conditioning set not found: {p}")
    try:
        d = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise BNSError(f"{p}: not a safetensors file ({str(e).splitlines()[0][:200]})") from None
    if "null" in d:  # today's files: `cond` and its `null`
        d[NULL_PREFIX + LEGACY_NAME] = d.pop("null")
    nulls = {k[len(NULL_PREFIX) :]: v for k, v in d.items() if k.startswith(NULL_PREFIX)}
    entries = {k: v for k, v in d.items() if not k.startswith(NULL_PREFIX)}
    if not entries:
        raise BNSError(f"{p} has no tensor named 'cond' (N, ...) nor named conditions: nothing for pairs to draw from")
    orphans = sorted(set(nulls) - set(entries))
    if orphans:
        raise BNSError(f"{p}: null value(s) for {', '.join(orphans)} without conditions of that name")
    for name in entries:
        if not name.replace("_", "").isalnum():
            raise BNSError(f"{p}: condition name {name!r} must be letters, digits and '_'")
    return condition_set(entries, nulls, where=str(p))
