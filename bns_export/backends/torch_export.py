"""torch.export of the unrolled sampler with a dynamic batch: the front end of every exporter."""

from __future__ import annotations

import warnings

import torch

from ..devices import device_of
from ..errors import BNSError
from .base import ExportRequest

#: torch releases this package is tested with (pyproject.toml states the same range)
TESTED_TORCH = ((2, 13), (2, 14))


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def untested_torch_note() -> str:
    """' (torch X is outside the tested range ...)' or '' for a tested torch."""
    v = torch_version()
    if TESTED_TORCH[0] <= v <= TESTED_TORCH[1]:
        return ""
    lo, hi = (".".join(map(str, t)) for t in TESTED_TORCH)
    return f" (torch {torch.__version__} is outside the tested range {lo}-{hi})"


def example_inputs(sampler: torch.nn.Module, request: ExportRequest, batch: int = 2) -> tuple:
    """Inputs for tracing on the sampler's device; batch >= 2 so the batch dimension is not specialised."""
    device = device_of(sampler)
    noise = torch.randn((batch, *request.sample_shape), generator=torch.Generator().manual_seed(0)).to(device)
    if request.cond_shape is not None:
        return (noise, torch.zeros((batch, *request.cond_shape), device=device))
    if request.conditional:
        return (noise, torch.zeros(batch, dtype=torch.long, device=device))
    return (noise,)


def dynamic_shapes(request: ExportRequest) -> dict:
    batch = torch.export.Dim("batch", min=1, max=max(2, request.max_batch))
    shapes = {"noise": {0: batch}}
    if request.conditional:
        shapes["labels"] = {0: batch}
    return shapes


def export_program(sampler: torch.nn.Module, request: ExportRequest) -> torch.export.ExportedProgram:
    """torch.export of the sampler with a dynamic batch; a model that cannot be traced is one clear error."""
    args = example_inputs(sampler, request)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(sampler, args, dynamic_shapes=dynamic_shapes(request))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BNSError(f"the model cannot be exported as one static graph: {first}{untested_torch_note()}") from None
