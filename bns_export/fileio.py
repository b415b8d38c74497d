"""Atomic file writes: a temporary sibling renamed into place, so no reader sees half a file.

Outputs honour the umask (0644 files and 0755 folders under umask 022): temporary files are
created private by mkstemp/mkdtemp and given the umask's mode before they are renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
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
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_file(path: Path, private: bool = False) -> Iterator[Path]:
    """The one atomic write: yield a temporary sibling of `path` to fill; on success it gets the umask's mode
    (or stays 0600 when `private`) and is renamed over `path`; on any error or signal it is removed."""
    path = Path(path)
    if not path.parent.exists():
        raise BNSError(f"output folder does not exist: {path.parent}")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise BNSError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not private:
            honour_umask(tmp)
        raise_if_interrupted()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
