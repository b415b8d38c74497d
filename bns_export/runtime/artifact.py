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
from dataclasses import dataclass
from pathlib import Path

from ..backends import BACKENDS
from ..checks import env_flag, guidance_scale, integer, number, read_json
from ..contract import Manifest
from ..errors import BNSError
from ..fileio import atomic_write_text, honour_umask
from ..interrupts import deferred_signals, raise_if_interrupted
from ..sizes import AXES, IMAGE_AXES, SizeSet
from .layout import MANIFEST, SIGNATURE, UNHASHED
from .signing import verify_manifest

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
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


#: when this process started: staging folders older than this and unlocked are leftovers of killed runs
PROCESS_START = time.time()
#: a staging folder `.<name>.bns-partial-XXXX` is ours only with its lock file `<staging>.lock` holding this line
STAGING_INFIX = ".bns-partial-"
LOCK_MAGIC = "bns-export staging lock\n"


def _our_lock(lock_path: Path) -> bool:
    """A lock file this tool wrote: a regular file (not a link) of one known line."""
    try:
        return lock_path.is_file() and not lock_path.is_symlink() and lock_path.read_bytes()[:64] == LOCK_MAGIC.encode()
    except OSError:
        return False


def remove_stale_staging(parent: Path) -> list[str]:
    """Remove staging folders of killed builds in `parent`: only folders named like ours *and* carrying our
    lock file, older than this process and not locked by a live build (each build holds an flock on
    `<staging>.lock` until it ends; the kernel drops it on exit).  Nothing else is touched."""
    removed = []
    for d in parent.glob(f".*{STAGING_INFIX}*"):
        if d.name.endswith(".lock") or not d.is_dir() or d.is_symlink() or d.stat().st_mtime >= PROCESS_START:
            continue
        lock_path = d.with_name(d.name + ".lock")
        if not _our_lock(lock_path):
            continue
        try:
            with open(lock_path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(d, ignore_errors=True)
                lock_path.unlink(missing_ok=True)
        except OSError:
            continue  # a live build holds it
        removed.append(d.name)
    return removed


def is_artifact_dir(folder: Path) -> bool:
    """A folder this tool may replace: empty, or a whole bns-export artifact (a manifest that passes every check,
    and exactly the files it lists with their hashes, so a file a user put there is never deleted)."""
    if not any(folder.iterdir()):
        return True
    try:
        verify_files(folder, parse_manifest(folder / MANIFEST))
    except (BNSError, OSError):
        return False
    return True


#: what a folder `is_artifact_dir` accepts is, for the refusal
ARTIFACT_AS_WRITTEN = "a bns-export artifact as written (it holds unlisted or changed files)"


def check_replaceable(
    dest: Path, force: bool = False, replaceable=is_artifact_dir, what: str = ARTIFACT_AS_WRITTEN
) -> None:
    """An output folder may be (re)written: absent, or replaceable, or force; else one line, exit 2.  The current
    folder and those above it never are (the publishing rename cannot replace them)."""
    dest = Path(dest)
    here = Path.cwd().resolve()
    if dest.resolve() == here or dest.resolve() in here.parents or dest.name in ("", ".", ".."):
        raise BNSError(f"output {dest} is the current folder or one above it; name a new folder for the output")
    if dest.exists() and not dest.is_dir():
        raise BNSError(f"output {dest} exists and is not a directory")
    if dest.is_dir() and not force and not replaceable(dest):
        hint = " (--force does)" if replaceable is is_artifact_dir else ""
        raise BNSError(f"output {dest} exists and is not {what}; refusing to replace it{hint}")


_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def publish(tmp: Path, dest: Path) -> None:
    """Put folder `tmp` at `dest`: at every instant `dest` is either the old folder or the new one.
    The old one is then removed (it ends up at `tmp`, whose lock marks it for cleanup if we are killed)."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if not exchange(tmp, dest):  # no atomic exchange here: two renames with signals held between them
        aside = tmp.with_name(tmp.name + "-old")
        with deferred_signals():
            os.replace(dest, aside)
            os.replace(tmp, dest)
            os.replace(aside, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(
    dest: Path, force: bool = False, replaceable=is_artifact_dir, what: str = ARTIFACT_AS_WRITTEN
) -> Iterator[Path]:
    """Yield a temporary sibling of `dest`; on normal exit it replaces `dest`, otherwise it is removed.

    An existing `dest` is replaced only when `replaceable(dest)` (by default: empty or a bns-export
    artifact) or with force=True; anything else is one line, exit 2, before anything is written.
    The staging folder is locked for the life of the build, so a later build removes it only once
    its process is gone (killed with SIGKILL, say); the published folder honours the umask.
    """
    dest = Path(dest)
    check_replaceable(dest, force, replaceable, what)
    parent = dest.parent
    if not parent.is_dir():
        raise BNSError(f"output folder does not exist: {parent}")
    remove_stale_staging(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{STAGING_INFIX}", dir=parent))
        lock = open(tmp.with_name(tmp.name + ".lock"), "w")
        lock.write(LOCK_MAGIC)
        lock.flush()
    except OSError as e:
        raise BNSError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield tmp
        for f in tmp.iterdir():  # whatever wrote them (safetensors, torch, TensorRT), files get the umask's mode
            honour_umask(f, directory=f.is_dir())
        honour_umask(tmp, directory=True)
        raise_if_interrupted()
        publish(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        Path(lock.name).unlink(missing_ok=True)
        lock.close()


def parse_manifest(path: Path) -> dict:
    """manifest.json read and checked field by field (schema, version, every field's type and range), nothing
    else: the files and the signature are read_manifest's."""
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BNSError(f"{path}: not a bns-export artifact manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BNSError(f"{path}: unknown artifact schema version {manifest.get('schema_version')!r}")
    try:
        check_manifest(manifest)
    except BNSError as e:
        raise BNSError(f"{path}: {e}") from None
    return manifest


def read_manifest(
    folder: str | os.PathLike,
    verify: bool = True,
    public_key: str | os.PathLike | None = None,
    require_signature: bool = False,
) -> dict:
    """The manifest (its JSON object) of an artifact directory, refusing a missing, tampered, foreign or malformed one.

    Integrity: every file the runners open (model, its external data, solver) must be listed with
    its sha256, under a plain name inside the folder (no `..`, no absolute path, no link), and the
    folder may hold no file the manifest does not list.  A detached signature `manifest.json.sig`,
    when present, must verify (by its embedded key, or by `public_key`, an Ed25519 PEM file, which
    then must have made it); with `require_signature` (or a key) an unsigned artifact is refused.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BNSError(f"artifact not found: {folder} is not a directory")
    if not path.is_file():
        raise BNSError(f"{folder} is not a complete artifact (no {MANIFEST})")
    manifest = parse_manifest(path)
    signed = (folder / SIGNATURE).exists() or (folder / SIGNATURE).is_symlink()
    if require_signature and not signed:
        raise BNSError(
            f"artifact {folder} is not signed (no {SIGNATURE}) and a signature is required "
            f"(--require-signature or {REQUIRE_SIGNATURE_ENV}=1)"
        )
    if public_key is not None or signed:
        verify_manifest(folder, public_key)  # a present signature must verify, key or no key
    if verify:
        verify_files(folder, manifest)
    return manifest


#: environment defaults of the open policy, for services and CI jobs that cannot pass flags
REQUIRE_SIGNATURE_ENV = "BNS_EXPORT_REQUIRE_SIGNATURE"
PUBLIC_KEY_ENV = "BNS_EXPORT_PUBLIC_KEY"


@dataclass(frozen=True)
class OpenPolicy:
    """What an artifact must show before it is opened (runtime, validate, triton, bns-export serve).

    public_key: an Ed25519 public key (PEM file) whose signature the manifest must carry; require_signature:
    an unsigned artifact is refused; trust_engine_code: open formats whose loading runs native code from the
    artifact (CODE_FORMATS: AOTInductor's shared library, TensorRT engines) without a verified key.  An ONNX
    artifact is data; those formats are code, opened only with a key that verifies or this explicit trust.
    """

    public_key: str | None = None
    require_signature: bool = False
    trust_engine_code: bool = False

    @classmethod
    def resolve(
        cls,
        public_key: str | os.PathLike | None = None,
        require_signature: bool | None = None,
        trust_engine_code: bool = False,
    ) -> OpenPolicy:
        """The caller's choices, with $BNS_EXPORT_PUBLIC_KEY and $BNS_EXPORT_REQUIRE_SIGNATURE where it made none."""
        key = public_key if public_key is not None else (os.environ.get(PUBLIC_KEY_ENV) or None)
        required = env_flag(REQUIRE_SIGNATURE_ENV) if require_signature is None else bool(require_signature)
        return cls(None if key is None else str(key), required, bool(trust_engine_code))

    def open(self, folder: str | os.PathLike) -> Manifest:
        """The verified manifest of an artifact about to be opened (the typed record), or one line saying what
        it lacks."""
        manifest = Manifest.from_json(
            read_manifest(folder, public_key=self.public_key, require_signature=self.require_signature)
        )
        backend = BACKENDS[manifest.format]
        if backend.runs_native_code and self.public_key is None and not self.trust_engine_code:
            raise BNSError(
                f"artifact {folder} is {manifest.format!r}, a format whose loading runs native code it carries "
                f"({manifest.model_file}); open it with the public key it was signed with (--public-key) or "
                "say you trust it (--trust-engine-code)"
            )
        return manifest


#: manifest fields the runners and the validator read, and their checks
FIELD_CHECKS = {
    "format": lambda v, k: _choice(v, k, tuple(BACKENDS)),
    "precision": lambda v, k: _choice(v, k, ("fp32", "fp16")),
    "nfe": lambda v, k: integer(v, k, 1, 1024),
    "max_batch": lambda v, k: integer(v, k, 1, 1 << 20),
    "guidance": lambda v, k: None if v is None else guidance_scale(v, k),  # None: a family (guidance_range)
    "model_file": lambda v, k: plain_name(v, k),
    "solver_file": lambda v, k: plain_name(v, k),
    "solver_fingerprint": lambda v, k: _text(v, k),
    "model_fingerprint": lambda v, k: _text(v, k),
    "solver_name": lambda v, k: _text(v, k),
}
#: optional fields: None, or of this kind
OPTIONAL_CHECKS = {
    "model": lambda v, k: _mapping(v, k),
    "model_spec": lambda v, k: _mapping(v, k),
    "decoder": lambda v, k: _text(_mapping(v, k).get("fingerprint"), "decoder fingerprint"),
    "conformance": lambda v, k: (_text(_mapping(v, k).get("file"), "conformance file"), _strings(v.get("inputs"), k)),
    "interval": lambda v, k: [number(t, k, 0, 1) for t in v] if isinstance(v, list) and len(v) == 2 else _bad(v, k),
    "init_scale": lambda v, k: number(v, k, 0, 1e6, lo_open=True),
    "guidance_range": lambda v, k: _guidance_range(v, k),
    "sizes": lambda v, k: SizeSet.from_json(v),
    "device": lambda v, k: _text(v, k),
}


def _guidance_range(v, k: str) -> list[float]:
    """A family's [lo, hi]: two guidance scales, lo < hi."""
    if not isinstance(v, list) or len(v) != 2:
        _bad(v, k)
    lo, hi = (guidance_scale(x, k) for x in v)
    if not lo < hi:
        raise BNSError(f"manifest field {k} must be [lo, hi] with lo < hi, got {v!r}")
    return [lo, hi]


def _bad(v, k: str):
    raise BNSError(f"manifest field {k} has the wrong type or shape: {str(v)[:80]!r}")


def _text(v, k: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 4096:
        raise BNSError(f"manifest field {k} must be a non-empty string, got {str(v)[:80]!r}")
    return v


def _mapping(v, k: str) -> dict:
    if not isinstance(v, dict):
        raise BNSError(f"manifest field {k} must be an object, got {str(v)[:80]!r}")
    return v


def _strings(v, k: str) -> list:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BNSError(f"manifest field {k} must list names, got {str(v)[:80]!r}")
    return v


def check_manifest(m: dict) -> None:
    """Types and ranges of every field a runner or the validator reads; the graph's signature is contract's."""
    for key, check in FIELD_CHECKS.items():
        if key not in m:
            raise BNSError(f"manifest has no {key!r}")
        check(m[key], key)
    for key in ("inputs", "outputs"):  # the signature itself is read (and checked) once, by Manifest.from_json below
        if key not in m:
            raise BNSError(f"manifest has no {key!r}")
    for key, check in OPTIONAL_CHECKS.items():
        if m.get(key) is not None:
            check(m[key], key)
    if (m["guidance"] is None) == (m.get("guidance_range") is None):
        raise BNSError("a manifest bakes one guidance or names a family's guidance_range, exactly one of them")
    _sizes(m.get("sample_shape"), "sample_shape")
    if m.get("num_classes") is not None:
        integer(m["num_classes"], "num_classes", 1, 1 << 20)
    if m.get("cond_shape") is not None:
        _sizes(m["cond_shape"], "cond_shape")
        if m.get("num_classes") is not None:
            raise BNSError("a manifest names num_classes or cond_shape, not both")
    _check_spatial(Manifest.from_json(m))
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
    for entry in Manifest.from_json(m).tables:
        if plain_name(entry.file, "table file") not in files:
            raise BNSError(f"table file {entry.file!r} is not among the hashed files")


def _sizes(shape, key: str, spatial: bool = False) -> None:
    """A shape: a list of 1 to 8 positive sizes (with `spatial`, its last two may name the dynamic axes)."""
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
        raise BNSError(f"{key} must be a list of 1 to 8 sizes, got {shape!r}")
    for i, size in enumerate(shape):
        if spatial and i >= len(shape) - 2 and size in (*AXES, *IMAGE_AXES):
            continue
        integer(size, key, 1, 1 << 20)


def _check_spatial(m: Manifest) -> None:
    """The sample's shape is sample_shape, with named spatial axes exactly when the manifest declares sizes,
    and those sizes start from sample_shape's own."""
    sizes = m.sizes
    want = m.sample_shape if sizes is None else tuple(sizes.symbolic(m.sample_shape))
    for spec in (m.signature.noise, m.signature.outputs[0]):
        if spec.shape != want:
            raise BNSError(f"{spec.name}'s shape {list(spec.shape)} does not match sample_shape (and sizes)")
    if sizes is not None and tuple(sizes.base) != m.sample_shape[-2:]:
        raise BNSError(f"sizes start from {list(sizes.base)}, sample_shape is {list(m.sample_shape)}")


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
