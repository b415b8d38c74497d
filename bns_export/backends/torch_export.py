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
    dtypes = {"float32": torch.float32, "int64": torch.long}
    conditions = request.signature.conditions  # zeros: a class index, or a tensor condition
    args = (noise, *(torch.zeros((batch, *c.shape), dtype=dtypes[c.dtype], device=device) for c in conditions))
    if request.guidance_range is not None:  # a family's guidance (B,), inside its range
        args += (torch.full((batch,), sum(request.guidance_range) / 2, device=device),)
    if request.signature.table is not None:  # a loop graph's table index (B,)
        args += (torch.zeros(batch, dtype=torch.long, device=device),)
    return args


def dynamic_shapes(request: ExportRequest) -> tuple:
    """A dynamic batch on every input (positional: noise, then the condition inputs); with declared sizes
    also noise's spatial axes, as multiples of the network's size step within the sizes' bounds."""
    batch = torch.export.Dim("batch", min=1, max=max(2, request.max_batch))
    noise = {0: batch}
    if request.sizes is not None:
        rank, step = len(request.sample_shape), request.sizes.step
        for axis, name, lo, hi in zip((rank - 1, rank), ("height", "width"), *request.sizes.bounds):
            if lo < hi:  # an axis of one size stays static
                noise[axis] = step * torch.export.Dim(f"{name}_steps", min=max(1, lo // step), max=hi // step)
    conditions = tuple({0: batch} for _ in request.input_names[1:])  # forward(noise, *conditions[, guidance|table])
    return (noise, conditions) if conditions else (noise,)


def export_program(sampler: torch.nn.Module, request: ExportRequest) -> torch.export.ExportedProgram:
    """torch.export of the sampler with a dynamic batch; a model that cannot be traced is one clear error."""
    args = example_inputs(sampler, request)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(sampler, args, dynamic_shapes=dynamic_shapes(request))
        drop_noop_squeezes(program)
        promote_cat_inputs(program)
        return program
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BNSError(f"the model cannot be exported as one static graph: {first}{untested_torch_note()}") from None


def drop_noop_squeezes(program: torch.export.ExportedProgram) -> int:
    """Remove squeeze(dim) nodes on dims of static size other than 1 (no-ops in torch, e.g. PixArt's
    `hidden_states.squeeze(1)` on (B, N, C)): ONNX's Squeeze rejects them.  Returns how many went."""
    graph = program.graph_module.graph
    targets = (torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims)
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        val = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
        dims = node.args[1] if len(node.args) > 1 else None
        if val is None or dims is None:
            continue
        dims = [dims] if isinstance(dims, int) else list(dims)
        sizes = [val.shape[d] for d in dims]
        if all(isinstance(size, int) and size != 1 for size in sizes):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            removed += 1
    if removed:
        program.graph_module.recompile()
    return removed


def promote_cat_inputs(program: torch.export.ExportedProgram) -> int:
    """Cast the inputs of cat nodes that mix dtypes to the dtype torch promotes them to (SDXL's fp32 time
    embedding beside fp16 text embeddings under --fp16): ONNX's Concat takes one type only.  Returns how many
    inputs were cast."""
    graph = program.graph_module.graph
    cast = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (torch.ops.aten.cat.default, torch.ops.aten.concat.default):
            continue
        out = node.meta.get("val")
        parts = node.args[0]
        vals = [getattr(p, "meta", {}).get("val") for p in parts]
        if out is None or any(v is None for v in vals) or all(v.dtype == out.dtype for v in vals):
            continue
        promoted = []
        for part, val in zip(parts, vals):
            if val.dtype != out.dtype:
                with graph.inserting_before(node):
                    part = graph.call_function(torch.ops.aten._to_copy.default, (part,), {"dtype": out.dtype})
                part.meta["val"] = val.to(out.dtype)
                cast += 1
            promoted.append(part)
        node.args = (promoted, *node.args[1:])
    if cast:
        program.graph_module.recompile()
    return cast
