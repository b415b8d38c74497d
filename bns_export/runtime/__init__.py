"""Load and run exported artifacts: `sampler = load(dir); x = sampler(noise, labels)`.

ONNX artifacts need only numpy and onnxruntime (no torch); AOTInductor and TensorRT artifacts
need torch (and tensorrt).  Every runner checks inputs against the manifest and is safe to call
from several threads at once.
"""

from __future__ import annotations

import os

from ..errors import BNSError
from .artifact import read_manifest
from .base import Runner


def load(folder: str | os.PathLike, providers: list[str] | None = None, device: str | None = None) -> Runner:
    """Open an artifact directory (hashes verified) and return its runner.

    providers: ONNX Runtime execution providers (default: CUDA/TensorRT when available, else CPU);
    device: "cpu" or "cuda" for AOTInductor packages.
    """
    manifest = read_manifest(folder)
    fmt = manifest.get("format")
    if fmt == "onnx":
        from .onnx_runner import OnnxRunner

        return OnnxRunner(folder, manifest, providers)
    if fmt == "aoti":
        from .aoti_runner import AotiRunner

        return AotiRunner(folder, manifest, device)
    if fmt == "tensorrt":
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(folder, manifest)
    raise BNSError(f"artifact {folder} has unknown format {fmt!r}")


__all__ = ["Runner", "load", "read_manifest"]
