"""AOTInductor: torch.export + aoti_compile_and_package into one .pt2 (compiled C++/CUDA), and its runner."""

from __future__ import annotations

import os
import shutil
import threading
import warnings
import weakref
from pathlib import Path

from ..contract import Manifest
from ..devicespec import cuda_index, is_cuda, parse_device
from ..errors import EXIT_MISSING_BACKEND, BNSError
from .base import ExportRequest, Runner
from .cuda_graph import CudaGraphs, check_cuda_graph_device


def check_available(request: ExportRequest | None) -> None:
    import torch

    if request is not None and is_cuda(request.device) and not torch.cuda.is_available():
        raise BNSError(f"--device {request.device} needs a CUDA GPU and none is available", EXIT_MISSING_BACKEND)


def export(sampler, request: ExportRequest, folder: Path, log=print) -> dict:
    """Compile the sampler on request.device into folder/model.pt2."""
    import torch

    from .torch_export import export_program

    log(f"compiling with AOTInductor for {request.device} ...")
    program = export_program(sampler.to(request.device), request)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.pt2"))
    except Exception as e:
        raise BNSError(f"AOTInductor compilation failed: {str(e).strip().splitlines()[0]}") from None
    return {"device": request.device}


class AotiRunner(Runner):
    """The loaded package on the device it was compiled for; torch or numpy in, the same kind out.

    cuda_graph=True (CUDA packages): each batch size is captured once into a CUDA graph and replayed.
    """

    def __init__(self, folder: Path, manifest: Manifest, device: str | None = None, cuda_graph: bool = False) -> None:
        super().__init__(folder, manifest)
        import torch

        built = self.manifest.device or "cpu"
        self.device = device or built
        if cuda_graph:
            check_cuda_graph_device(self.device)
        if parse_device(self.device)[0] != parse_device(built)[0]:
            raise BNSError(f"this package was compiled for {built}, not {self.device}")
        if is_cuda(self.device) and not torch.cuda.is_available():
            raise BNSError("this AOTInductor package needs a CUDA GPU", EXIT_MISSING_BACKEND)
        path = self.folder / self.manifest.model_file
        if is_cuda(self.device):
            probe_load(path, self.device)
        try:
            self.model = load_package(path, _index(self.device))
        except Exception as e:
            raise BNSError(f"cannot load AOTInductor package: {str(e).strip().splitlines()[0]}") from None
        self.cuda_graph = cuda_graph
        self._call = CudaGraphs(self.model, self.device) if cuda_graph else self.model

    def infer(self, noise, condition, guidance=None, table=None):
        import torch

        x = torch.as_tensor(noise, dtype=torch.float32).to(self.device)
        args = [x, *self.condition_args(condition, self.device, guidance, table)]
        with self._lock, torch.no_grad():
            out = self._call(*args)
        return dict(zip(self.output_names, out if isinstance(out, (list, tuple)) else (out,)))


_TMPDIR_LOCK = threading.Lock()


def load_package(path: Path, device_index: int):
    """torch's aoti_load_package with its extraction folder inside one of ours: torch's loader leaves that folder
    (the package's library included) in the temporary folder when a load fails, and tries twice; ours is removed
    then, or when the model is freed or the process exits."""
    import tempfile

    import torch

    private = tempfile.mkdtemp(prefix="bns-aoti-")  # also settles Python's own temporary folder before TMPDIR changes
    with _TMPDIR_LOCK:
        old = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = private  # read by the loader (std::filesystem::temp_directory_path)
        try:
            model = torch._inductor.aoti_load_package(str(path), device_index=device_index)
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        finally:
            if old is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old
    weakref.finalize(model, shutil.rmtree, private, ignore_errors=True)  # also at exit, if never freed
    return model


PROBE = """
import sys, torch
m = torch._inductor.aoti_load_package(sys.argv[1], device_index=int(sys.argv[2]))
torch.cuda.synchronize()
"""


def probe_load(path: Path, device: str, timeout: float = 600.0) -> None:
    """Load the package once in a child process first: a loader that crashes (a segfault reported
    for CUDA packages under torch 2.11) becomes one line here instead of killing the caller."""
    import signal
    import subprocess
    import sys

    try:
        res = subprocess.run(
            [sys.executable, "-c", PROBE, str(path), str(max(0, _index(device)))],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BNSError(f"loading the AOTInductor package took over {timeout:.0f} s in a probe process") from None
    if res.returncode < 0:
        import torch

        raise BNSError(
            f"loading this AOTInductor package crashes the process ({signal.Signals(-res.returncode).name}) "
            f"under torch {torch.__version__}; use the ONNX or TensorRT artifact instead"
        )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise BNSError(f"cannot load AOTInductor package: {last}")


def _index(device: str) -> int:
    """aoti_load_package's device_index: N for cuda:N, -1 (the current device) otherwise."""
    return cuda_index(device, default=-1)


def open_runner(
    folder: Path, manifest: dict, device: str | None = None, providers=None, cuda_graph: bool = False
) -> AotiRunner:
    return AotiRunner(folder, manifest, device, cuda_graph)
