"""AOTInductor: torch.export + aoti_compile_and_package into one .pt2 (compiled C++/CUDA)."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import BNSError
from .onnx_backend import export_program
from .unroll import UnrolledSampler


def export_aoti(sampler: UnrolledSampler, shape: tuple[int, ...], path: Path, max_batch: int, device: str) -> dict:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BNSError("--device cuda needs a CUDA GPU and none is available", 3)
    sampler = sampler.to(device)
    program, _ = export_program(sampler, shape, max_batch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as e:
        raise BNSError(f"AOTInductor compilation failed: {str(e).strip().splitlines()[0]}") from None
    return {"device": device}
