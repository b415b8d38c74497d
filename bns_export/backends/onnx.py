"""ONNX: the exporter (opset 18, dynamic batch, checked, weights stored once) and the ONNX Runtime runner.

The runner imports no torch: numpy in, numpy out (torch tensors in give torch tensors out on
their device).  The exporter imports torch when called.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from ..contract import TABLE_INITIALIZERS, Manifest
from ..devicespec import cuda_index, is_cuda
from ..errors import EXIT_MISSING_BACKEND, BNSError
from .base import (
    ExportRequest,
    Runner,
    check_graph_metadata,
    graph_metadata_value,
    profile_strings,
    to_numpy,
)
from .onnx_guards import add_input_guards
from .onnx_walk import all_initializers, all_nodes, hoist_into_loops
from .trt_support import check_tensorrt_support

OPSET = 18
EXTERNAL_DATA_BYTES = 512 << 20  # weights above this go to model.onnx.data (protobuf caps a file at 2 GB)
#: the exported graph's file: the ONNX formats' model file, kept beside a TensorRT engine (its refit source)
GRAPH_FILE = "model.onnx"


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise BNSError(
            "ONNX export needs the onnx extra: pip install 'bns-export[onnx]'", EXIT_MISSING_BACKEND
        ) from None
    return onnx


def check_available(request: ExportRequest | None) -> None:
    import_onnx()


def export(sampler, request: ExportRequest, folder: Path, log=print) -> dict:
    """Write folder/model.onnx; return {"graph": statistics}."""
    log("exporting the sampler to ONNX ...")
    return {"graph": export_onnx(sampler, request, folder / GRAPH_FILE)}


def refit(artifact: Path, staged: Path, manifest: Manifest, log=print) -> None:
    """Nothing past the staged graph: it is the model file."""


def export_onnx(sampler, request: ExportRequest, path: Path) -> dict:
    """Write `path` (and `path`.data for large weights); return graph statistics."""
    import torch

    from .torch_export import export_program

    onnx = import_onnx()
    program = export_program(sampler, request)
    input_names = request.input_names
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
                output_names=list(request.output_names),
                opset_version=OPSET,
                verbose=False,
                optimize=False,  # optimised below, by passes whose cost is linear in the graph
            )
            optimize_linear(onnx_program.model)
        except Exception as e:
            raise BNSError(f"ONNX conversion failed: {str(e).strip().splitlines()[0]}") from None
        finally:
            onnx_logger.setLevel(level)
    dedupe_initializers(onnx_program.model)
    weight_bytes = sum(p.numel() * p.element_size() for p in sampler.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    onnx_program.save(str(path), external_data=external)
    model = onnx.load(str(path), load_external_data=False)
    for node in all_nodes(model.graph):  # per-node stack traces and scopes: half the file, no use at run time
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    for key, value in request.metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, graph_metadata_value(value)
    if request.tables:
        held = {init.name for init in model.graph.initializer}
        if not set(TABLE_INITIALIZERS.values()) <= held:
            raise BNSError("the loop graph lost its table initializers in the export (a bns-export bug)")
    add_input_guards(onnx, model, request.guidance_range, request.sizes, request.tables)
    hoist_into_loops(model.graph)
    model.doc_string = "bns-export unrolled sampler: noise (+ labels) in, sample out"
    onnx.save(model, str(path))  # external data, if any, stays in place: only the graph file changes
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred")
    Path(str(path) + ".inferred").unlink()
    stats = graph_stats(onnx.load(str(path), load_external_data=False), external)
    # what "weights stored once" is measured against: the sampler's parameters and buffers (network, decoder)
    stats["module_bytes"] = sum(t.numel() * t.element_size() for t in (*sampler.parameters(), *sampler.buffers()))
    stats["initializer_ratio"] = round(stats["initializer_bytes"] / max(1, stats["module_bytes"]), 4)
    return stats


def optimize_linear(model) -> None:
    """onnxscript's optimizer (onnx_ir model, in place) without its pattern rewriter: inlining, constant
    folding, dead-code removal, constant lifting, deduplication and common-subexpression elimination, each
    linear in the graph.  The rewriter's pattern matching grows much faster than the unrolled graph (on a 13M
    parameter UNet: 7.5 / 41 / 206 s at NFE 2 / 4 / 8); ONNX Runtime fuses the same patterns when it loads
    the graph, and its rules that match constants by tolerance (`x + 1e-15` -> `x`) never run."""
    import onnx_ir as ir
    from onnx_ir.passes import common as passes
    from onnxscript.optimizer import _constant_folding

    steps = ir.passes.PassManager(
        [
            _constant_folding.FoldConstantsPass(
                shape_inference=True,
                input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
            ),
            passes.RemoveUnusedNodesPass(),
            passes.RemoveUnusedFunctionsPass(),
            passes.RemoveUnusedOpsetsPass(),
        ],
        steps=2,
        early_stop=True,
    )
    ir.passes.Sequential(
        passes.InlinePass(),
        steps,
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.LiftSubgraphInitializersToMainGraphPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.OutputFixPass(),
        passes.NameFixPass(),
    )(model)


def dedupe_initializers(model) -> int:
    """Merge initializers with identical dtype, shape and bytes (onnx_ir model, in place); return how many went.

    Constant folding turns `W.T` of an attention projection into a new initializer once per
    unrolled step; merging identical ones stores each weight (or its transpose) once, whatever the NFE.
    """
    import hashlib

    import onnx_ir as ir

    keep: dict[tuple, object] = {}
    removed = 0
    for name, value in list(model.graph.initializers.items()):
        const = value.const_value
        if const is None or name in TABLE_INITIALIZERS.values():  # a loop graph's tables: replaceable by name
            continue
        data = const.numpy()
        key = (str(value.dtype), tuple(data.shape), hashlib.sha256(data.tobytes()).hexdigest())
        if key not in keep:
            keep[key] = value
            continue
        ir.convenience.replace_all_uses_with(value, keep[key])
        del model.graph.initializers[name]
        removed += 1
    return removed


def graph_stats(model, external: bool = False) -> dict:
    """Node and initializer counts; `weight_*` counts only initializers named after the network's and the
    decoder's parameters and buffers."""
    inits = list(all_initializers(model.graph))

    def nbytes(t) -> int:
        return int(np.prod(t.dims)) * {1: 4, 10: 2, 7: 8, 6: 4, 11: 8, 9: 1}.get(t.data_type, 4)

    weights = [t for t in inits if t.name.startswith(("field.", "decoder."))]
    return {
        "nodes": len(model.graph.node),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "initializers": len(inits),
        "initializer_bytes": sum(nbytes(t) for t in inits),
        "weight_initializers": len(weights),
        "weight_bytes": sum(nbytes(t) for t in weights),
        "external_data": external,
    }


def provider_list(
    available: list[str], device: str | None, providers: list | None, manifest: Manifest | dict
) -> list[tuple[str, dict]]:
    """(name, options) pairs for InferenceSession: explicit providers win, else the device picks.

    Every TensorRT EP entry gets defaults derived from the manifest (profile shapes from the batch
    range, an engine cache outside the hashed artifact folder) under the caller's own options.
    """
    manifest = Manifest.of(manifest)
    if providers is None:
        if device is None:
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if is_cuda(device):
            gpu = {"device_id": cuda_index(device)}
            providers = [("CUDAExecutionProvider", gpu), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
    out = []
    for p in providers:
        name, opts = (p[0], dict(p[1] or {})) if isinstance(p, (tuple, list)) else (p, {})
        if not isinstance(name, str) or not isinstance(opts, dict):
            raise BNSError(f"bad provider {p!r}: give a name or a (name, options) pair")
        if name not in available:
            raise BNSError(f"ONNX Runtime lacks {name} (available: {', '.join(available)})", EXIT_MISSING_BACKEND)
        if name == "TensorrtExecutionProvider":
            opts = {**tensorrt_ep_defaults(manifest), **opts}
            if str(opts.get("trt_fp16_enable", "0")).lower() in ("1", "true"):
                raise BNSError(
                    "trt_fp16_enable would let TensorRT drop the solver's fp32 accumulation; "
                    "compile with --fp16 instead (the graph's types then carry the precision)"
                )
        out.append((name, {k: str(v) if isinstance(v, bool) else v for k, v in opts.items()}))
    return out


def tensorrt_ep_defaults(manifest: Manifest) -> dict:
    """ONNX Runtime TensorRT EP options for this artifact: profile shapes and an engine cache keyed by
    the model file's sha256 and the library versions (kept outside the hashed artifact directory)."""
    import hashlib

    import onnxruntime as ort

    key = hashlib.sha256(
        f"{manifest.files[manifest.model_file]}|ort {ort.__version__}|{manifest.get('versions')}".encode()
    ).hexdigest()[:24]
    from ..fileio import cache_root

    lo, opt, hi = profile_strings(manifest)
    return {
        "trt_profile_min_shapes": lo,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": hi,
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_root() / "ort-trt-engines" / key),
        "trt_timing_cache_enable": "True",
        "trt_fp16_enable": "False",
    }


def validation_extras(folder: Path, manifest: Manifest) -> dict:
    """The ops and dtypes of the graph that TensorRT's ONNX parser would refuse (no TensorRT needed)."""
    model = import_onnx().load(str(folder / manifest.model_file), load_external_data=False)
    return {"tensorrt_support": check_tensorrt_support(model)}


class OnnxRunner(Runner):
    """One InferenceSession (whose run() is thread-safe) over the artifact's model file.

    cuda_graph=True (CUDA EP only): each batch size is captured once into a CUDA graph on
    preallocated device buffers (IOBinding) and replayed; calls are then serialised by a lock.
    low_memory=True: no CPU memory arena and no memory pattern, so transient buffers are returned after
    each run instead of kept (an SD-size fp16 graph on the CPU casts its weights to fp32 at every run:
    with the arena its peak grew from 5.5 to 9.4 GB over three runs); validation opens it so.
    """

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        providers: list | None = None,
        device: str | None = None,
        cuda_graph: bool = False,
        low_memory: bool = False,
    ) -> None:
        super().__init__(folder, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BNSError(
                "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)", EXIT_MISSING_BACKEND
            ) from None
        self._ort = ort
        manifest = self.manifest
        chosen = provider_list(ort.get_available_providers(), device, providers, manifest)
        if cuda_graph:
            if chosen[0][0] != "CUDAExecutionProvider":
                raise BNSError("cuda_graph needs the CUDA execution provider first in the provider list")
            chosen[0][1]["enable_cuda_graph"] = "1"
        self.cuda_graph = cuda_graph
        for name, opts in chosen:
            if name == "TensorrtExecutionProvider":
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if low_memory:
            opts.enable_cpu_mem_arena = False
            opts.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(str(self.folder / manifest.model_file), opts, providers=chosen)
        except Exception as e:  # a corrupt model file that still matched its hash is a build bug, but say so
            raise BNSError(f"ONNX Runtime cannot load {manifest.model_file}: {str(e).strip()[:300]}") from None
        check_graph_metadata(self.session.get_modelmeta().custom_metadata_map, manifest)
        names = sorted(i.name for i in self.session.get_inputs())
        wanted = sorted(self.input_names)
        outs = [o.name for o in self.session.get_outputs()]
        if names != wanted or outs != self.output_names:
            raise BNSError(
                f"{manifest.model_file} takes {names} and gives {outs}, but its manifest describes "
                f"{wanted} -> {self.output_names}: the manifest does not belong to this graph"
            )
        self.providers = self.session.get_providers()
        gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.device_id = int(chosen[0][1].get("device_id", 0)) if gpu else 0
        self.device = f"cuda:{self.device_id}" if gpu else "cpu"
        self._graphs: dict[int, tuple] = {}

    def infer(self, noise, condition, guidance=None, table=None):
        feed = {"noise": to_numpy(noise, np.float32), **self.condition_feed(condition, guidance, table)}
        try:
            outs = self._replay(feed) if self.cuda_graph else self.session.run(self.output_names, feed)
        except Exception as e:  # a graph/manifest mismatch that the checks above could not see
            raise BNSError(
                f"ONNX Runtime failed: {(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}"
            ) from None
        return dict(zip(self.output_names, outs))

    def _replay(self, feed: dict) -> list[np.ndarray]:
        """Copy into this batch size's bound device buffers and replay its CUDA graph (captured on first use)."""
        ort = self._ort
        key = feed["noise"].shape  # one graph per batch size and spatial size
        with self._lock:
            if key not in self._graphs:
                binding = self.session.io_binding()
                values = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", self.device_id) for k, v in feed.items()}
                outs = [
                    ort.OrtValue.ortvalue_from_shape_and_type(
                        self.output_shape(name, feed["noise"].shape), np.float32, "cuda", self.device_id
                    )
                    for name in self.output_names
                ]
                for k, v in values.items():
                    binding.bind_ortvalue_input(k, v)
                for name, out in zip(self.output_names, outs):
                    binding.bind_ortvalue_output(name, out)
                run_options = ort.RunOptions()
                run_options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
                self._graphs[key] = (binding, values, outs, run_options)
            binding, values, outs, run_options = self._graphs[key]
            for k, v in feed.items():
                values[k].update_inplace(v)
            self.session.run_with_iobinding(binding, run_options)
            return [out.numpy() for out in outs]


def open_runner(
    folder: Path,
    manifest: dict,
    device: str | None = None,
    providers: list | None = None,
    cuda_graph: bool = False,
    low_memory: bool = False,
) -> OnnxRunner:
    return OnnxRunner(folder, manifest, providers, device, cuda_graph, low_memory)
