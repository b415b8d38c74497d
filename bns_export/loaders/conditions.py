"""Condition sets: the safetensors files that ground-truth pairs draw their conditions from."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import BNSError


def load_condition_set(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditions ("cond", (N, ...)) and the optional null condition ("null") of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise BNSError(f"conditioning set not found: {p}")
    try:
        d = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise BNSError(f"{p}: not a safetensors file ({str(e).splitlines()[0][:200]})") from None
    if "cond" not in d:
        raise BNSError(f"{p} has no tensor named 'cond' (N, ...): the conditions pairs draw from")
    cond, null = d["cond"], d.get("null")
    if not cond.is_floating_point() or cond.ndim < 2 or not torch.isfinite(cond).all():
        raise BNSError(f"{p}: 'cond' must be finite floats of shape (N, ...), got {cond.dtype} {tuple(cond.shape)}")
    if null is not None and (tuple(null.shape) != tuple(cond.shape[1:]) or not torch.isfinite(null).all()):
        raise BNSError(f"{p}: 'null' must be finite with shape {tuple(cond.shape[1:])}, got {tuple(null.shape)}")
    return cond, null
