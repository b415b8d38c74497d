"""Device specs, parsed in one place: cpu, cuda, cuda:N (default: cuda when available, else cpu)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .devicespec import parse_device
from .errors import EXIT_MISSING_BACKEND, BNSError


def resolve_device(spec: str | None = None) -> str:
    """A checked torch device string; asking for a GPU that is not there is one line, exit code 3."""
    if spec is None or spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, index = parse_device(spec)
    spec = str(spec).strip().lower()
    if kind == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise BNSError(f"device {spec} needs a CUDA GPU and none is available", EXIT_MISSING_BACKEND)
    if index is not None and index >= torch.cuda.device_count():
        raise BNSError(f"device {spec} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return spec


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu for a module with neither)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off inside the block: on a GPU cuDNN convolutions default to TF32 (a 10-bit mantissa), too coarse
    for a ground truth solved to 1e-6 or for the fp32 reference an artifact is compared with."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
