"""TensorRT engine from the exported ONNX (10.x / 11.x API, strongly typed, dynamic batch profile)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BNSError
from ..fileio import atomic_write_bytes
from ..runtime.tensorrt_runner import import_tensorrt


def default_timing_cache() -> Path:
    return Path(os.environ.get("BNS_EXPORT_CACHE", Path.home() / ".cache" / "bns-export")) / "trt-timing.cache"


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    sample_shape: tuple[int, ...],
    conditional: bool,
    max_batch: int,
    opt_batch: int,
    workspace_bytes: int = 2 << 30,
    timing_cache: Path | None = None,
) -> dict:
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
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    profile.set_shape("noise", (1, *sample_shape), (opt_batch, *sample_shape), (max_batch, *sample_shape))
    if conditional:
        profile.set_shape("labels", (1,), (opt_batch,), (max_batch,))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
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
        "opt_batch": opt_batch,
        "workspace_bytes": int(workspace_bytes),
        "timing_cache": str(cache_path),
        "timing_cache_reused": bool(cache_bytes),
    }
