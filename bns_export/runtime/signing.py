"""Detached Ed25519 signatures of an artifact's manifest (which hashes every file): `manifest.json.sig`.

Keys are PEM files (`openssl genpkey -algorithm ed25519 -out key.pem`,
`openssl pkey -in key.pem -pubout -out key.pub.pem`).  Needs the `cryptography` package
(`pip install 'bns-export[sign]'`); without it, signing or verifying is one line with exit code 3.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from ..errors import EXIT_MISSING_BACKEND, BNSError
from .artifact import MANIFEST, SIGNATURE

MAX_KEY_BYTES = 16 << 10


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
    from ..fileio import atomic_write_bytes

    sig = base64.b64encode(key.sign((folder / MANIFEST).read_bytes())) + b"\n"
    atomic_write_bytes(folder / SIGNATURE, sig)
    return folder / SIGNATURE


def verify_manifest(folder: str | os.PathLike, public_key: str | os.PathLike) -> None:
    """Raise unless folder/manifest.json.sig is a valid signature of manifest.json by `public_key`."""
    serialization, ed25519, invalid = _crypto()
    try:
        key = serialization.load_pem_public_key(_key_bytes(public_key, "public key"))
    except (ValueError, TypeError) as e:
        raise BNSError(f"cannot read public key {public_key}: {str(e).splitlines()[0]}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BNSError(f"{public_key} is not an Ed25519 public key")
    folder = Path(folder)
    sig_path = folder / SIGNATURE
    if not sig_path.is_file() or sig_path.is_symlink():
        raise BNSError(f"artifact {folder} is not signed (no {SIGNATURE})")
    try:
        sig = base64.b64decode(sig_path.read_bytes()[:256].strip(), validate=True)
        key.verify(sig, (folder / MANIFEST).read_bytes())
    except (invalid, ValueError):
        raise BNSError(f"artifact {folder}: the manifest's signature does not verify with {public_key}") from None
