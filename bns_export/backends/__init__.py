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

from ..contract import Manifest
from ..errors import BNSError
from .base import ExportRequest, Runner


@dataclass(frozen=True)
class Backend:
    """A format and every fact about it that the rest of the package asks: its model file, the module
    implementing it, what it runs on, where it is traced and validated, and how Triton serves it."""

    name: str
    model_file: str
    module: str
    runs_with: str
    #: runner options beyond device and providers (low_memory: a lean session, which validation asks for)
    extras: tuple[str, ...] = ()
    #: the exporter traces on the target device (AOTInductor compiles for it); else on the CPU
    traces_on_device: bool = False
    #: where an artifact runs and validates unless told (None: the device it was built for)
    default_device: str | None = None
    #: the runner may fall back to the CPU where its runtime lacks the GPU (ONNX Runtime's CPU build)
    cpu_fallback: bool = False
    #: Triton's platform name, or None where Triton does not serve the format
    triton_platform: str | None = None
    #: Triton's default instance kind is a GPU
    triton_gpu: bool = False
    #: on Triton GPUs, ONNX Runtime's TensorRT accelerator applies
    triton_tensorrt_accelerator: bool = False
    #: opening the artifact runs native code it carries (a shared library, a TensorRT engine and its plugins):
    #: the artifact is code, opened only when signed by a key the user names or trusted explicitly
    runs_native_code: bool = False
    #: the build keeps a timing cache across builds (--timing-cache)
    timing_cache: bool = False
    #: `refit` replaces the artifact's weights in place (the ONNX graph's initializers, then the format's own file)
    refittable: bool = False
    #: refittable only when built with --refittable (TensorRT's BuilderFlag.REFIT: the engine keeps its weights
    #: replaceable, at some cost in speed); ONNX graphs always are
    refit_flag: bool = False
    #: the graph runs the network once inside a loop over data tables, chosen per sample by its `table` input
    #: (compile.loop); else the one table is unrolled into n steps
    loop: bool = False

    def _impl(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def check_available(self, request: ExportRequest | None) -> None:
        """Raise (exit code 3) before anything is written when the toolchain or device is missing (request None:
        before one exists, as refit asks, the toolchain alone)."""
        self._impl().check_available(request)

    def export(self, sampler, request: ExportRequest, folder: Path, log=print) -> dict:
        """Write the model file(s) into `folder`; return the backend's manifest entries."""
        return self._impl().export(sampler, request, Path(folder), log)

    def refit(self, artifact: Path, staged: Path, manifest: Manifest, log=print) -> None:
        """After refit staged the ONNX graph with the new weights, write the format's model file from it (an engine
        refitted, never rebuilt; nothing for ONNX, whose graph is the model file)."""
        self._impl().refit(Path(artifact), Path(staged), manifest, log)

    def validation_extras(self, folder: Path, manifest: Manifest) -> dict:
        """Entries the format adds to a validation report (ONNX: which ops TensorRT's parser supports)."""
        impl = self._impl()
        return impl.validation_extras(Path(folder), manifest) if hasattr(impl, "validation_extras") else {}

    def open(self, folder: Path, manifest: Manifest | dict, device=None, providers=None, **extras) -> Runner:
        """The runner of an artifact directory whose manifest was already verified."""
        unknown = sorted(set(extras) - set(self.extras))
        if unknown:
            raise BNSError(f"{self.name} artifacts take no option {', '.join(unknown)}")
        return self._impl().open_runner(Path(folder), manifest, device=device, providers=providers, **extras)


BACKENDS = {
    "onnx": Backend(
        "onnx",
        "model.onnx",
        "onnx",
        "ONNX Runtime (CPU; CUDA/TensorRT EPs with onnxruntime-gpu)",
        ("cuda_graph", "low_memory"),
        cpu_fallback=True,
        triton_platform="onnxruntime_onnx",
        triton_tensorrt_accelerator=True,
        refittable=True,
    ),
    "onnx-loop": Backend(
        "onnx-loop",
        "model.onnx",
        "onnx",
        "ONNX Runtime (CPU; CUDA EP with onnxruntime-gpu): one graph for several tables and NFEs",
        ("low_memory",),  # ONNX Runtime's CUDA graphs take no Loop
        cpu_fallback=True,
        triton_platform="onnxruntime_onnx",
        refittable=True,
        loop=True,
    ),
    "tensorrt": Backend(
        "tensorrt",
        "model.plan",
        "tensorrt",
        "TensorRT 10.x / 11.x on a CUDA GPU",
        default_device="cuda",
        triton_platform="tensorrt_plan",
        triton_gpu=True,
        runs_native_code=True,
        timing_cache=True,
        refittable=True,
        refit_flag=True,
    ),
    "tensorrt-loop": Backend(
        "tensorrt-loop",
        "model.plan",
        "tensorrt",
        "TensorRT 10.x / 11.x on a CUDA GPU: one engine for several tables and NFEs (an ILoop)",
        default_device="cuda",
        triton_platform="tensorrt_plan",
        triton_gpu=True,
        runs_native_code=True,
        timing_cache=True,
        refittable=True,
        refit_flag=True,
        loop=True,
    ),
    "aoti": Backend(
        "aoti",
        "model.pt2",
        "aoti",
        "torch (AOTInductor), CPU or CUDA",
        ("cuda_graph",),
        traces_on_device=True,
        runs_native_code=True,
    ),
}


def formats_with(fact: str) -> tuple[str, ...]:
    """The formats whose Backend record has `fact` (a flag or a value), in table order: for --help and errors."""
    return tuple(b.name for b in BACKENDS.values() if getattr(b, fact))


#: the formats whose artifacts are code (loading them runs native code they carry)
CODE_FORMATS = formats_with("runs_native_code")

#: the formats `refit` takes (a TensorRT engine only when built with --refittable)
REFITTABLE_FORMATS = formats_with("refittable")

#: the format `compile` and the demo build unless told: portable, torch-free to run
DEFAULT_FORMAT = "onnx"

#: the libraries whose versions an artifact records (the exporters' and runtimes')
LIBRARIES = ("onnx", "onnxruntime", "onnxscript", "tensorrt")


def get_backend(fmt: str) -> Backend:
    """The table entry of `fmt`, or one clear error naming the formats."""
    try:
        return BACKENDS[fmt]
    except (KeyError, TypeError):
        raise BNSError(f"unknown format {fmt!r}; choose one of {', '.join(BACKENDS)}") from None


__all__ = [
    "BACKENDS",
    "CODE_FORMATS",
    "DEFAULT_FORMAT",
    "LIBRARIES",
    "Backend",
    "ExportRequest",
    "Runner",
    "get_backend",
]
