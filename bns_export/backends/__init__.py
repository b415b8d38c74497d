"""Backends: one module each, pairing an exporter (artifact files from the unrolled sampler) with its
runner, listed in one table that `compile`, `runtime.load` and validation read.

Backend modules are imported on first use, so `runtime.load` of an ONNX artifact never imports torch.
Each module provides `export(sampler, request, folder, log) -> dict` (manifest entries),
`open_runner(folder, manifest, **options) -> Runner` and `check_available(request)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import BNSError
from .base import ExportRequest, Runner


@dataclass(frozen=True)
class Backend:
    """A format: its model file, the module implementing it, and what it runs on."""

    name: str
    model_file: str
    module: str
    runs_with: str
    #: runner options beyond device and providers
    extras: tuple[str, ...] = ()

    def _impl(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def check_available(self, request: ExportRequest) -> None:
        """Raise (exit code 3) before anything is written when the toolchain or device is missing."""
        self._impl().check_available(request)

    def export(self, sampler, request: ExportRequest, folder: Path, log=print) -> dict:
        """Write the model file(s) into `folder`; return the backend's manifest entries."""
        return self._impl().export(sampler, request, Path(folder), log)

    def open(self, folder: Path, manifest: dict, device=None, providers=None, **extras) -> Runner:
        """The runner of an artifact directory whose manifest was already verified."""
        unknown = sorted(set(extras) - set(self.extras))
        if unknown:
            raise BNSError(f"{self.name} artifacts take no option {', '.join(unknown)}")
        return self._impl().open_runner(Path(folder), manifest, device=device, providers=providers, **extras)


BACKENDS = {
    "onnx": Backend(
        "onnx", "model.onnx", "onnx", "ONNX Runtime (CPU; CUDA/TensorRT EPs with onnxruntime-gpu)", ("cuda_graph",)
    ),
    "tensorrt": Backend("tensorrt", "model.plan", "tensorrt", "TensorRT 10.x / 11.x on a CUDA GPU"),
    "aoti": Backend("aoti", "model.pt2", "aoti", "torch (AOTInductor), CPU or CUDA", ("cuda_graph",)),
}


def get_backend(fmt: str) -> Backend:
    """The table entry of `fmt`, or one clear error naming the formats."""
    try:
        return BACKENDS[fmt]
    except (KeyError, TypeError):
        raise BNSError(f"unknown format {fmt!r}; choose one of {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "Backend", "ExportRequest", "Runner", "get_backend"]
