"""ONNX: the exporter (opset 18, dynamic batch, checked, weights stored once) and the ONNX Runtime runner.

The runner imports no torch: numpy in, numpy out (torch tensors in give torch tensors out on
their device).  The exporter imports torch when called.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from ..errors import EXIT_MISSING_BACKEND, BNSError
from .base import ExportRequest, Runner, is_torch, to_numpy

OPSET = 18
EXTERNAL_DATA_BYTES = 512 << 20  # weights above this go to model.onnx.data (protobuf caps a file at 2 GB)
PREFERRED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise BNSError(
            "ONNX export needs the onnx extra: pip install 'bns-export[onnx]'", EXIT_MISSING_BACKEND
        ) from None
    return onnx


def check_available(request: ExportRequest) -> None:
    import_onnx()


def export(sampler, request: ExportRequest, folder: Path, log=print) -> dict:
    """Write folder/model.onnx; return {"graph": statistics}."""
    log("exporting the sampler to ONNX ...")
    return {"graph": export_onnx(sampler, request, folder / "model.onnx")}


def export_onnx(sampler, request: ExportRequest, path: Path) -> dict:
    """Write `path` (and `path`.data for large weights); return graph statistics."""
    import torch

    from .torch_export import export_program

    onnx = import_onnx()
    program = export_program(sampler, request)
    input_names = ["noise", "labels"] if request.conditional else ["noise"]
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
    for key, value in request.metadata.items():
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


class OnnxRunner(Runner):
    """One InferenceSession (whose run() is thread-safe) over the artifact's model file."""

    def __init__(self, folder: Path, manifest: dict, providers: list | None = None) -> None:
        super().__init__(folder, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BNSError(
                "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)", EXIT_MISSING_BACKEND
            ) from None
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PREFERRED if p in available and p != "TensorrtExecutionProvider"]
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
        missing = [p for p in names if p not in available]
        if missing:
            raise BNSError(
                f"ONNX Runtime lacks {', '.join(missing)} (available: {', '.join(available)})", EXIT_MISSING_BACKEND
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.folder / manifest["model_file"]), opts, providers=providers)
        except Exception as e:  # a corrupt model file that still matched its hash is a build bug, but say so
            raise BNSError(f"ONNX Runtime cannot load {manifest['model_file']}: {e}") from None
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] != "CPUExecutionProvider" else "cpu"

    def infer(self, noise, labels):
        feed = {"noise": to_numpy(noise, np.float32)}
        if self.conditional:
            feed["labels"] = to_numpy(labels, np.int64)
        out = self.session.run(["sample"], feed)[0]
        if is_torch(noise):
            import torch

            return torch.from_numpy(out).to(noise.device)
        return out


def open_runner(folder: Path, manifest: dict, device: str | None = None, providers: list | None = None) -> OnnxRunner:
    return OnnxRunner(folder, manifest, providers)
