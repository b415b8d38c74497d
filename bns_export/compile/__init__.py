"""Compile a model + solver into one artifact directory (ONNX, TensorRT or AOTInductor) and validate it.

Backends share one shape: each writes its model file into the staging directory and returns
extra manifest entries; the staging directory becomes the artifact only after validation passes.
"""

from __future__ import annotations

import copy
import datetime
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..errors import EXIT_PARITY_FAILED, BNSError
from ..evaluate import resolve_solver
from ..fields import NetworkField
from ..models import ModelOptions, load_model
from ..runtime.artifact import staging_dir, write_manifest
from .unroll import UnrolledSampler

FORMATS = ("onnx", "tensorrt", "aoti")
MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan", "aoti": "model.pt2"}


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "tensorrt"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    return versions


def half_precision(field: torch.nn.Module) -> torch.nn.Module:
    """A copy whose network runs in fp16; conversions, guidance and the solver stay fp32."""
    inner = getattr(field, "field", field)
    if not isinstance(inner, NetworkField):
        raise BNSError("--fp16 needs a network model; analytic fields have no weights to halve")
    field = copy.deepcopy(field)
    inner = getattr(field, "field", field)
    inner.net.half()
    inner.net_dtype = torch.float16
    return field


def io_specs(field, max_batch: int) -> tuple[list[dict], list[dict]]:
    shape = ["batch", *field.sample_shape]
    inputs = [{"name": "noise", "dtype": "float32", "shape": shape}]
    if field.num_classes is not None:
        inputs.append(
            {
                "name": "labels",
                "dtype": "int64",
                "shape": ["batch"],
                "note": f"0..{field.num_classes - 1}, or -1 for unconditional",
            }
        )
    return inputs, [{"name": "sample", "dtype": "float32", "shape": shape}]


def compile_artifact(
    model: str,
    solver: str,
    fmt: str,
    out: str | Path,
    *,
    options: ModelOptions | None = None,
    guidance: float = 1.0,
    nfe: int | None = None,
    fp16: bool = False,
    max_batch: int = 16,
    opt_batch: int | None = None,
    device: str = "cpu",
    validate: bool = True,
    min_psnr: float | None = None,
    workspace_bytes: int = 2 << 30,
    timing_cache: str | None = None,
    log=print,
) -> dict:
    """Build, validate and atomically publish an artifact directory; return its manifest."""
    if fmt not in FORMATS:
        raise BNSError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if max_batch < 1:
        raise BNSError(f"--max-batch must be at least 1, got {max_batch}")
    opt_batch = opt_batch or max(1, max_batch // 2)
    if not 1 <= opt_batch <= max_batch:
        raise BNSError(f"--opt-batch {opt_batch} is outside 1..{max_batch}")
    if fmt == "tensorrt":
        from ..runtime.tensorrt_runner import import_tensorrt

        import_tensorrt()  # fail with exit 3 before anything is written
    options = options or ModelOptions()
    field = load_model(model, options, guidance)
    ns = resolve_solver(solver, field, nfe)
    precision = "fp16" if fp16 else "fp32"
    export_field = half_precision(field) if fp16 else field
    if field.default_dtype == torch.float64:  # analytic fields: the artifact computes in fp32
        export_field = copy.deepcopy(export_field).float()
    sampler = UnrolledSampler(export_field, ns).eval()
    inputs, outputs = io_specs(field, max_batch)
    manifest = {
        "format": fmt,
        "precision": precision,
        "nfe": ns.nfe,
        "guidance": float(guidance),
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "sample_shape": list(field.sample_shape),
        "num_classes": field.num_classes,
        "inputs": inputs,
        "outputs": outputs,
        "model_file": MODEL_FILES[fmt],
        "solver_file": "solver.json",
        "solver_fingerprint": ns.fingerprint(),
        "solver_name": ns.name,
        "model_fingerprint": field.fingerprint(),
        "model": field.describe(),
        "model_spec": {"model": model, "options": asdict(options)},
        "interval": [field.t_lo, field.t_hi],
        "init_scale": field.init_scale,
        "guidance_note": "guidance is baked in: both branches run in one batched network call per step",
        "tool_version": __version__,
        "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with staging_dir(Path(out)) as tmp:
        ns.save(tmp / "solver.json")
        onnx_path = tmp / "model.onnx"
        if fmt in ("onnx", "tensorrt"):
            from .onnx_backend import export_onnx

            meta = {
                k: manifest[k]
                for k in (
                    "solver_fingerprint",
                    "model_fingerprint",
                    "nfe",
                    "guidance",
                    "precision",
                    "inputs",
                    "outputs",
                    "tool_version",
                )
            }
            log(f"exporting {ns.nfe}-NFE sampler to ONNX ...")
            manifest["graph"] = export_onnx(sampler, field.sample_shape, onnx_path, max_batch, meta)
        if fmt == "tensorrt":
            from .tensorrt_backend import build_engine

            log("building TensorRT engine ...")
            manifest["tensorrt"] = build_engine(
                onnx_path,
                tmp / "model.plan",
                field.sample_shape,
                field.num_classes is not None,
                max_batch,
                opt_batch,
                workspace_bytes,
                Path(timing_cache) if timing_cache else None,
            )
        if fmt == "aoti":
            from .aoti_backend import export_aoti

            log("compiling with AOTInductor ...")
            manifest.update(export_aoti(sampler, field.sample_shape, tmp / "model.pt2", max_batch, device))
        write_manifest(tmp, manifest)
        if validate:
            from ..validate import validate_artifact

            log("validating against the eager PyTorch sampler ...")
            report = validate_artifact(tmp, min_psnr=min_psnr)
            manifest["validation"] = report
            if not report["passed"]:
                raise BNSError(
                    f"parity check failed: min PSNR {report['psnr_min']:.2f} dB < gate "
                    f"{report['gate_db']:.0f} dB; no artifact written",
                    EXIT_PARITY_FAILED,
                )
            manifest = write_manifest(tmp, manifest)
        else:
            manifest = write_manifest(tmp, manifest)
    return manifest
