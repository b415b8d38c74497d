"""Atomic file writes: a temporary sibling renamed into place, so no reader sees half a file.

Outputs honour the umask (0644 files and 0755 folders under umask 022): temporary files are
created private by mkstemp/mkdtemp and given the umask's mode before they are renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import BNSError
from .interrupts import raise_if_interrupted


def cache_root() -> Path:
    """Where bns-export caches what it can recompute (ground truth, TensorRT engines and timing caches):
    $BNS_EXPORT_CACHE, else ~/.cache/bns-export."""
    return Path(os.environ.get("BNS_EXPORT_CACHE") or Path.home() / ".cache" / "bns-export")


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) created private by mkstemp/mkdtemp the mode the umask allows."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


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
        honour_umask(Path(tmp))
        raise_if_interrupted()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
