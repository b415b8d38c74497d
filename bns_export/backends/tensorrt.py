"""TensorRT (10.x / 11.x API): the engine builder (strongly typed, dynamic batch profile, timing cache, optionally
refittable) from the exported ONNX graph, the engine's refit from a graph with new weights, and the engine runner."""

from __future__ import annotations

from pathlib import Path

from ..contract import Manifest
from ..errors import EXIT_MISSING_BACKEND, BNSError
from ..fileio import atomic_write_bytes
from .base import ExportRequest, Runner, profile_shapes


def import_tensorrt():
    """tensorrt and a CUDA device, or one clear error with exit code 3."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BNSError(
            "TensorRT is not installed (pip install tensorrt, on a machine with a CUDA GPU)", EXIT_MISSING_BACKEND
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise BNSError("TensorRT needs a CUDA GPU and none is available", EXIT_MISSING_BACKEND)
    return trt


def check_available(request: ExportRequest | None) -> None:
    import_tensorrt()
    from .onnx import import_onnx

    import_onnx()


def default_timing_cache() -> Path:
    from ..fileio import cache_root

    return cache_root() / "trt-timing.cache"


def export(sampler, request: ExportRequest, folder: Path, log=print) -> dict:
    """The ONNX graph (kept beside the engine), then model.plan built from it."""
    from .onnx import GRAPH_FILE
    from .onnx import export as export_onnx

    entries = export_onnx(sampler, request, folder, log)
    log("building TensorRT engine ...")
    entries["tensorrt"] = build_engine(folder / GRAPH_FILE, folder / "model.plan", request)
    entries["engine_refittable"] = request.refittable
    return entries


def build_engine(onnx_path: Path, plan_path: Path, request: ExportRequest) -> dict:
    """Parse, build with an optimisation profile for batch 1..max (opt), reuse the timing cache."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # 10.x: precision from the ONNX types; 11.x: always strongly typed
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BNSError(f"TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request.workspace_bytes))
    if request.refittable:  # every weight stays replaceable by `refit` (no weight folded into a kernel)
        config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_shapes(request.metadata["inputs"], request.opt_batch, request.max_batch, request.sizes)
    for name in request.input_names:
        profile.set_shape(name, lo[name], opt[name], hi[name])
    config.add_optimization_profile(profile)
    cache_path = Path(request.timing_cache) if request.timing_cache else default_timing_cache()
    cache_bytes = cache_path.read_bytes() if cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BNSError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan_path.write_bytes(bytes(plan))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return {
        "tensorrt_version": trt.__version__,
        "opt_batch": request.opt_batch,
        "workspace_bytes": int(request.workspace_bytes),
        "timing_cache": str(cache_path),
        "timing_cache_reused": bool(cache_bytes),
    }


def _load_engine(runtime, plan: bytes):
    """The deserialised engine (its runtime must outlive it), or one line: a plan is specific to the GPU and
    TensorRT version that built it."""
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BNSError(
            "TensorRT cannot load this engine: it was built for another GPU or TensorRT version; "
            "rebuild it with `bns-export compile --format tensorrt`"
        )
    return engine


def refit(artifact: Path, staged: Path, manifest: Manifest, log=print) -> None:
    """The artifact's engine (built with BuilderFlag.REFIT) given the staged graph's weights by TensorRT's ONNX parser
    refitter (IParserRefitter::refitFromFile, then IRefitter::refitCudaEngine), written to staged/model.plan: the
    engine is refitted in place of a build, so a fine-tune or new tables cost no tactic search."""
    from .onnx import GRAPH_FILE

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = _load_engine(runtime, (artifact / manifest.model_file).read_bytes())
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    log("refitting the TensorRT engine ...")
    if not parser.refit_from_file(str(staged / GRAPH_FILE)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BNSError(f"TensorRT cannot refit the engine from the new graph: {errors}")
    missing = list(refitter.get_missing_weights())
    if missing:
        raise BNSError(f"TensorRT's refitter is missing weights {', '.join(missing[:3])}: compile the new model")
    if not refitter.refit_cuda_engine():
        raise BNSError("TensorRT failed to refit the engine (see the TensorRT log above): compile the new model")
    (staged / manifest.model_file).write_bytes(bytes(engine.serialize()))


class TensorRTRunner(Runner):
    """Deserialises the plan once; one execution context, serialised by a lock."""

    device = "cuda"

    def __init__(self, folder: Path, manifest: Manifest, device: str | None = None) -> None:
        super().__init__(folder, manifest)
        trt = import_tensorrt()
        self.device = device or "cuda"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = _load_engine(self._runtime, (self.folder / self.manifest.model_file).read_bytes())
        self.context = self.engine.create_execution_context()

    def infer(self, noise, condition, guidance=None, table=None):
        import torch

        x = torch.as_tensor(noise, dtype=torch.float32).to(self.device).contiguous()
        outs = {name: torch.empty(self.output_shape(name, x.shape), device=x.device) for name in self.output_names}
        with self._lock, torch.cuda.device(x.device):
            self.context.set_input_shape("noise", tuple(x.shape))
            self.context.set_tensor_address("noise", x.data_ptr())
            conds = [c.contiguous() for c in self.condition_args(condition, self.device, guidance, table)]
            for name, c in zip(self.input_names[1:], conds):
                self.context.set_input_shape(name, tuple(c.shape))
                self.context.set_tensor_address(name, c.data_ptr())
            for name, out in outs.items():
                self.context.set_tensor_address(name, out.data_ptr())
            stream = torch.cuda.current_stream()
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise BNSError("TensorRT execution failed")
            stream.synchronize()
        return outs


def open_runner(folder: Path, manifest: dict, device: str | None = None, providers=None) -> TensorRTRunner:
    return TensorRTRunner(folder, manifest, device)
