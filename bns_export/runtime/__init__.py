"""Load and run exported artifacts: `sampler = load(dir); x = sampler(noise, condition)`.

`sampler(noise, cond)` returns the artifact's product: the decoded image when it was compiled with
a decoder, else the sample; `sampler.run(noise, cond)` returns every output by name.

ONNX artifacts need only numpy and onnxruntime (no torch); AOTInductor and TensorRT artifacts
need torch (and tensorrt).  Every runner checks inputs against the manifest, is safe to call
from several threads at once, and returns what it was given (numpy, or torch on the input's device).
"""

from __future__ import annotations

import os

from ..backends import Runner, get_backend
from ..errors import BNSError
from .artifact import OpenPolicy, read_manifest


def load(
    folder: str | os.PathLike,
    providers: list | None = None,
    device: str | None = None,
    public_key: str | os.PathLike | None = None,
    require_signature: bool | None = None,
    trust_engine_code: bool = False,
    **options,
) -> Runner:
    """Open an artifact directory (hashes verified) and return its runner.

    public_key: an Ed25519 public key (PEM file); the manifest's detached signature must verify
    (default: $BNS_EXPORT_PUBLIC_KEY).  require_signature: refuse an unsigned artifact (default:
    $BNS_EXPORT_REQUIRE_SIGNATURE=1).  trust_engine_code: open an AOTInductor or TensorRT artifact, whose
    loading runs native code it carries, without a verified public key (ONNX artifacts are data).
    providers: ONNX Runtime execution providers, names or (name, options) pairs, passed through
    (TensorRT EP entries get profile shapes and an engine cache derived from the manifest);
    device: "cpu", "cuda" or "cuda:N" (default: the artifact's, or CUDA when available for ONNX);
    options: backend extras, e.g. cuda_graph=True for ONNX on the CUDA EP.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise BNSError(f"load() takes an artifact folder (a path), got {type(folder).__name__}")
    manifest = OpenPolicy.resolve(public_key, require_signature, trust_engine_code).open(folder)
    return get_backend(manifest.format).open(folder, manifest, device=device, providers=providers, **options)


__all__ = ["OpenPolicy", "Runner", "load", "read_manifest"]
