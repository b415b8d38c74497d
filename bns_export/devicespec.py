"""Device strings, parsed in one place and without torch (the ONNX runtime path reads them too):
cpu, cuda, cuda:N.  `devices.resolve_device` adds what torch knows (is there a GPU, how many)."""

from __future__ import annotations

import re

from .errors import BNSError

DEVICE_RE = re.compile(r"(cpu|cuda)(?::(\d{1,3}))?")


def parse_device(spec: str) -> tuple[str, int | None]:
    """("cpu", None), ("cuda", None) or ("cuda", N); anything else is one line."""
    m = DEVICE_RE.fullmatch(str(spec).strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise BNSError(f"bad device {spec!r}: use cpu, cuda or cuda:N")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def is_cuda(spec: str | None) -> bool:
    """Whether a device string names a CUDA device."""
    return spec is not None and parse_device(spec)[0] == "cuda"


def cuda_index(spec: str, default: int = 0) -> int:
    """The CUDA device number of `cuda:N` (default for plain `cuda`)."""
    kind, index = parse_device(spec)
    return default if index is None else index
