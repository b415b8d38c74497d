"""Detached Ed25519 signatures of an artifact's manifest (which hashes every file): `manifest.json.sig`.

The signature file holds the base64 signature and, on a second line `ed25519:<base64>`, the raw
public key that made it.  Whenever the file is present it must verify: against the embedded key
when no key is given (a swapped graph or an edited manifest is caught), and against the given key
(which must be the embedded one) with `--public-key` (which also says *who* signed it).

Keys are PEM files (`openssl genpkey -algorithm ed25519 -out key.pem`,
`openssl pkey -in key.pem -pubout -out key.pub.pem`).  Needs the `cryptography` package
(`pip install 'bns-export[sign]'`); without it, signing or verifying is one line with exit code 3.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from ..checks import read_small_file
from ..errors import EXIT_MISSING_BACKEND, BNSError
from ..fileio import atomic_write_bytes
from .layout import MANIFEST, SIGNATURE

MAX_KEY_BYTES = 16 << 10
KEY_PREFIX = b"ed25519:"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BNSError(
            "signatures need the cryptography package: pip install 'bns-export[sign]'", EXIT_MISSING_BACKEND
        ) from None
    return serialization, ed25519, InvalidSignature


def _key_bytes(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise BNSError(f"{what} not found: {p}")
    if p.stat().st_size > MAX_KEY_BYTES:
        raise BNSError(f"{what} {p} is too large to be a key")
    return p.read_bytes()


def sign_manifest(folder: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Write folder/manifest.json.sig: the Ed25519 signature of manifest.json, base64."""
    serialization, ed25519, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(_key_bytes(private_key, "private key"), password=None)
    except (ValueError, TypeError) as e:
        raise BNSError(f"cannot read private key {private_key}: {str(e).splitlines()[0]}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BNSError(f"{private_key} is not an Ed25519 private key")
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise BNSError(f"{folder} is not an artifact (no {MANIFEST})")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = base64.b64encode(key.sign((folder / MANIFEST).read_bytes())) + b"\n"
    atomic_write_bytes(folder / SIGNATURE, sig + KEY_PREFIX + base64.b64encode(raw) + b"\n")
    return folder / SIGNATURE


def _read_signature(sig_path: Path) -> tuple[bytes, bytes | None]:
    """(signature, embedded raw public key or None for a file written before keys were embedded)."""
    if sig_path.is_symlink():
        raise BNSError(f"{sig_path} is a symbolic link; artifacts hold regular files only")
    lines = read_small_file(sig_path, "signature file", 1024).strip().splitlines()
    try:
        sig = base64.b64decode(lines[0].strip(), validate=True)
        embedded = None
        if len(lines) > 1 and lines[1].startswith(KEY_PREFIX):
            embedded = base64.b64decode(lines[1][len(KEY_PREFIX) :].strip(), validate=True)
    except (IndexError, ValueError):
        raise BNSError(f"{sig_path} is not a signature file (base64 signature and key lines)") from None
    return sig, embedded


def verify_manifest(folder: str | os.PathLike, public_key: str | os.PathLike | None = None) -> None:
    """Raise unless folder/manifest.json.sig verifies: with `public_key` (PEM) by that key, else by the key
    embedded in the signature file.  Without a key and without a signature file there is nothing to check."""
    folder = Path(folder)
    sig_path = folder / SIGNATURE
    if public_key is None and not sig_path.exists() and not sig_path.is_symlink():
        return
    serialization, ed25519, invalid = _crypto()
    if public_key is not None:
        try:
            key = serialization.load_pem_public_key(_key_bytes(public_key, "public key"))
        except (ValueError, TypeError) as e:
            raise BNSError(f"cannot read public key {public_key}: {str(e).splitlines()[0]}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise BNSError(f"{public_key} is not an Ed25519 public key")
        if not sig_path.exists():
            raise BNSError(f"artifact {folder} is not signed (no {SIGNATURE})")
    sig, embedded = _read_signature(sig_path)
    if public_key is None:
        if embedded is None:
            raise BNSError(f"artifact {folder} has a signature without its key: verify it with --public-key")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(embedded)
        except ValueError:
            raise BNSError(f"{sig_path}: the embedded public key is not an Ed25519 key") from None
        by = "its embedded key"
    else:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if embedded is not None and embedded != raw:
            raise BNSError(
                f"artifact {folder}: the manifest's signature does not verify with {public_key} (another key made it)"
            )
        by = str(public_key)
    try:
        key.verify(sig, (folder / MANIFEST).read_bytes())
    except invalid:
        raise BNSError(f"artifact {folder}: the manifest's signature does not verify with {by}") from None
