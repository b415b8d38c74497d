"""Artifact directories: files + manifest.json (sha256 of every file), written atomically.

A directory is built under a hidden temporary name beside its destination and renamed into
place only when complete, so a crash or Ctrl-C never leaves a directory that looks finished.
Imports nothing beyond the standard library: the torch-free runtime reads manifests too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..checks import integer, number, read_json
from ..errors import BNSError
from ..fileio import honour_umask

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
UNHASHED = (MANIFEST, SIGNATURE)
SCHEMA = "bns-export/artifact"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` except the manifest and its signature, by name."""
    entries = sorted(folder.iterdir())
    nested = [p.name for p in entries if p.is_dir()]
    if nested:
        raise BNSError(f"artifact folders are flat; {folder} holds folder(s) {', '.join(nested)}")
    return {p.name: sha256_file(p) for p in entries if p.is_file() and p.name not in UNHASHED}


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash the folder's files into the manifest and write it (atomically)."""
    manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **manifest, "files": file_hashes(folder)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


#: when this process started: staging folders older than this and unlocked are leftovers of killed runs
PROCESS_START = time.time()
STAGING_PATTERNS = (".*.partial-*", ".*.old-*")


def remove_stale_staging(parent: Path) -> list[str]:
    """Remove staging folders of killed builds in `parent`: older than this process and not locked by a
    live build (each build holds an flock on `<staging>.lock` until it ends; the kernel drops it on exit)."""
    removed = []
    for pattern in STAGING_PATTERNS:
        for d in parent.glob(pattern):
            if not d.is_dir() or d.is_symlink() or d.stat().st_mtime >= PROCESS_START:
                continue
            lock_path = d.with_name(d.name + ".lock")
            with contextlib.ExitStack() as stack:
                if lock_path.exists():
                    try:
                        f = stack.enter_context(open(lock_path, "a"))
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a live build holds it
                shutil.rmtree(d, ignore_errors=True)
                lock_path.unlink(missing_ok=True)
                removed.append(d.name)
    return removed


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `dest`; on normal exit it replaces `dest`, otherwise it is removed.

    The staging folder is locked for the life of the build, so a later build removes it only once
    its process is gone (killed with SIGKILL, say); the published folder honours the umask.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise BNSError(f"output {dest} exists and is not a directory")
    parent = dest.parent
    if not parent.is_dir():
        raise BNSError(f"output folder does not exist: {parent}")
    remove_stale_staging(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
        lock = open(tmp.with_name(tmp.name + ".lock"), "w")
    except OSError as e:
        raise BNSError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield tmp
        for f in tmp.iterdir():  # whatever wrote them (safetensors, torch, TensorRT), files get the umask's mode
            honour_umask(f, directory=f.is_dir())
        honour_umask(tmp, directory=True)
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
        Path(lock.name).unlink(missing_ok=True)
        lock.close()


def read_manifest(folder: str | os.PathLike, verify: bool = True, public_key: str | os.PathLike | None = None) -> dict:
    """The manifest of an artifact directory, refusing a missing, tampered, foreign or malformed one.

    Integrity: every file the runners open (model, its external data, solver) must be listed with
    its sha256, under a plain name inside the folder (no `..`, no absolute path, no link), and the
    folder may hold no file the manifest does not list.  With `public_key` (an Ed25519 PEM file),
    the detached signature `manifest.json.sig` must verify too.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BNSError(f"artifact not found: {folder} is not a directory")
    if not path.is_file():
        raise BNSError(f"{folder} is not a complete artifact (no {MANIFEST})")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BNSError(f"{path}: not a bns-export artifact manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BNSError(f"{path}: unknown artifact schema version {manifest.get('schema_version')!r}")
    try:
        check_manifest(manifest)
    except BNSError as e:
        raise BNSError(f"{path}: {e}") from None
    if public_key is not None:
        from .signing import verify_manifest

        verify_manifest(folder, public_key)
    if verify:
        verify_files(folder, manifest)
    return manifest


#: manifest fields the runners and the validator read, and their checks
FIELD_CHECKS = {
    "format": lambda v, k: _choice(v, k, ("onnx", "tensorrt", "aoti")),
    "precision": lambda v, k: _choice(v, k, ("fp32", "fp16")),
    "nfe": lambda v, k: integer(v, k, 1, 1024),
    "max_batch": lambda v, k: integer(v, k, 1, 1 << 20),
    "guidance": lambda v, k: number(v, k, 0, 100),
    "model_file": lambda v, k: plain_name(v, k),
    "solver_file": lambda v, k: plain_name(v, k),
}


def check_manifest(m: dict) -> None:
    """Types and ranges of every field a runner or the validator reads."""
    for key, check in FIELD_CHECKS.items():
        if key not in m:
            raise BNSError(f"manifest has no {key!r}")
        check(m[key], key)
    _sizes(m.get("sample_shape"), "sample_shape")
    if m.get("num_classes") is not None:
        integer(m["num_classes"], "num_classes", 1, 1 << 20)
    if m.get("cond_shape") is not None:
        _sizes(m["cond_shape"], "cond_shape")
        if m.get("num_classes") is not None:
            raise BNSError("a manifest names num_classes or cond_shape, not both")
    outputs = m.get("outputs")
    names = (
        [o.get("name") for o in outputs]
        if isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)
        else None
    )
    if names not in (["sample"], ["sample", "image"]):
        raise BNSError(f"outputs must be [sample] or [sample, image] (with a decoder), got {names or outputs!r}")
    for o in outputs:
        if not isinstance(o.get("shape"), list) or o["shape"][:1] != ["batch"]:
            raise BNSError(f"output {o['name']}'s shape must be ['batch', sizes...], got {o.get('shape')!r}")
        _sizes(o["shape"][1:], f"output {o['name']}'s shape")
    if outputs[0]["shape"][1:] != m["sample_shape"]:
        raise BNSError("output sample's shape does not match sample_shape")
    if m.get("opt_batch") is not None:
        integer(m["opt_batch"], "opt_batch", 1, m["max_batch"])
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise BNSError("manifest lists no file hashes: refusing an artifact that cannot be verified")
    for name, digest in files.items():
        plain_name(name, "file name")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise BNSError(f"sha256 of {name} is not 64 hex digits")
    for key in ("model_file", "solver_file"):
        if m[key] not in files:
            raise BNSError(f"{key} {m[key]!r} is not among the hashed files")


def _sizes(shape, key: str) -> None:
    """A shape: a list of 1 to 8 positive sizes."""
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
        raise BNSError(f"{key} must be a list of 1 to 8 sizes, got {shape!r}")
    for size in shape:
        integer(size, key, 1, 1 << 20)


def plain_name(name, what: str) -> str:
    """A file name inside the artifact folder: no separators, no `..`, not hidden, not absolute."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise BNSError(f"{what} {name!r} is not a plain file name inside the artifact folder")
    return name


def _choice(v, k: str, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise BNSError(f"{k} must be one of {', '.join(allowed)}, got {v!r}")
    return v


def verify_files(folder: Path, manifest: dict) -> None:
    """Every listed file present, a regular file (not a link) with its sha256; no unlisted file."""
    files = manifest["files"]
    for name, digest in files.items():
        p = folder / name
        if p.is_symlink():
            raise BNSError(f"artifact {folder}: {name} is a symbolic link; artifacts hold regular files only")
        if not p.is_file():
            raise BNSError(f"artifact {folder} is incomplete: {name} is missing")
        if sha256_file(p) != digest:
            raise BNSError(f"artifact {folder} was modified: sha256 of {name} does not match the manifest")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in files and p.name not in UNHASHED)
    if extra:
        raise BNSError(f"artifact {folder} holds files its manifest does not list: {', '.join(extra[:5])}")
