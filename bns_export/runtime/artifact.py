"""Artifact directories: files + manifest.json (sha256 of every file), written atomically.

A directory is built under a hidden temporary name beside its destination and renamed into
place only when complete, so a crash or Ctrl-C never leaves a directory that looks finished.
Imports nothing beyond the standard library: the torch-free runtime reads manifests too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import BNSError

MANIFEST = "manifest.json"
SCHEMA = "bns-export/artifact"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` except the manifest, by relative path."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash the folder's files into the manifest and write it (atomically)."""
    manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **manifest, "files": file_hashes(folder)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `dest`; on normal exit it replaces `dest`, otherwise it is removed."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise BNSError(f"output {dest} exists and is not a directory")
    parent = dest.parent
    if not parent.is_dir():
        raise BNSError(f"output folder does not exist: {parent}")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as e:
        raise BNSError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> dict:
    """The manifest of an artifact directory, refusing a missing, tampered or foreign one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BNSError(f"artifact not found: {folder} is not a directory")
    if not path.exists():
        raise BNSError(f"{folder} is not a complete artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BNSError(f"{path}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BNSError(f"{path}: not a bns-export artifact manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BNSError(f"{path}: unknown artifact schema version {manifest.get('schema_version')!r}")
    if verify:
        files = manifest.get("files") or {}
        for name, digest in files.items():
            p = folder / name
            if not p.is_file():
                raise BNSError(f"artifact {folder} is incomplete: {name} is missing")
            if sha256_file(p) != digest:
                raise BNSError(f"artifact {folder} was modified: sha256 of {name} does not match the manifest")
    return manifest
