"""Atomic file writes: a temporary sibling renamed into place, so no reader sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import BNSError


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary sibling and os.replace: never a half-written file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and os.replace: never a half-written file."""
    path = Path(path)
    if not path.parent.exists():
        raise BNSError(f"output folder does not exist: {path.parent}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise BNSError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
