"""ONNX export of the unrolled sampler: dynamic batch, opset 18, checked, weights stored once."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from ..errors import EXIT_MISSING_BACKEND, BNSError
from .unroll import UnrolledSampler

OPSET = 18
EXTERNAL_DATA_BYTES = 512 << 20  # weights above this go to model.onnx.data (protobuf caps a file at 2 GB)


def example_inputs(sampler: UnrolledSampler, shape: tuple[int, ...], batch: int = 2):
    """Inputs for tracing; batch >= 2 so the batch dimension is not specialised."""
    noise = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))
    if sampler.conditional:
        return (noise, torch.arange(batch, dtype=torch.long) % sampler.field.num_classes)
    return (noise,)


def dynamic_shapes(sampler: UnrolledSampler, max_batch: int) -> dict:
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    shapes = {"noise": {0: batch}}
    if sampler.conditional:
        shapes["labels"] = {0: batch}
    return shapes


def export_program(sampler: UnrolledSampler, shape: tuple[int, ...], max_batch: int):
    """torch.export of the sampler with a dynamic batch; a model that cannot be traced is a clear error."""
    args = example_inputs(sampler, shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(sampler, args, dynamic_shapes=dynamic_shapes(sampler, max_batch)), args
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BNSError(f"the model cannot be exported as one static graph: {first}") from None


def export_onnx(sampler: UnrolledSampler, shape: tuple[int, ...], path: Path, max_batch: int, metadata: dict) -> dict:
    """Write `path` (and `path`.data for large weights); return graph statistics."""
    try:
        import onnx
    except ImportError:
        raise BNSError(
            "ONNX export needs the onnx extra: pip install 'bns-export[onnx]'", EXIT_MISSING_BACKEND
        ) from None
    program, _ = export_program(sampler, shape, max_batch)
    input_names = ["noise", "labels"] if sampler.conditional else ["noise"]
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # silence "torchvision is not installed" and similar notices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                input_names=input_names,
                output_names=["sample"],
                opset_version=OPSET,
                verbose=False,
            )
        except Exception as e:
            raise BNSError(f"ONNX conversion failed: {str(e).strip().splitlines()[0]}") from None
        finally:
            onnx_logger.setLevel(level)
    weight_bytes = sum(p.numel() * p.element_size() for p in sampler.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    onnx_program.save(str(path), external_data=external)
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:  # per-node stack traces and scopes: half the file, no use at run time
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    model.doc_string = "bns-export unrolled sampler: noise (+ labels) in, sample out"
    onnx.save(model, str(path))  # external data, if any, stays in place: only the graph file changes
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred")
    Path(str(path) + ".inferred").unlink()
    return graph_stats(onnx.load(str(path), load_external_data=False), external)


def graph_stats(model, external: bool = False) -> dict:
    """Node and initializer counts; `weight_*` counts only initializers named after parameters."""
    import numpy as np

    inits = list(model.graph.initializer)

    def nbytes(t) -> int:
        return int(np.prod(t.dims)) * {1: 4, 10: 2, 7: 8, 6: 4, 11: 8, 9: 1}.get(t.data_type, 4)

    weights = [t for t in inits if t.name.startswith("field.")]
    return {
        "nodes": len(model.graph.node),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "initializers": len(inits),
        "initializer_bytes": sum(nbytes(t) for t in inits),
        "weight_initializers": len(weights),
        "weight_bytes": sum(nbytes(t) for t in weights),
        "external_data": external,
    }
