"""Triton Inference Server model repositories from artifacts: `<repo>/<name>/config.pbtxt` and one version
folder per artifact (`1/model.onnx` or `1/model.plan`, external data beside it), plus a README.

The config is written from the manifest: platform onnxruntime_onnx or tensorrt_plan, max_batch_size,
dims without the batch axis, labels as `dims: [ 1 ]` reshaped to a scalar per request, dynamic
batching, an instance group (GPU when the artifact targets one), a warmup request and, for ONNX
on GPUs, ONNX Runtime's TensorRT accelerator with the artifact's precision, profile shapes from
the batch range and an engine cache.  Imports no torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import BNSError
from .artifact import read_manifest, staging_dir

PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def _dims(shape: list) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _io(spec: dict, batch_only: bool) -> str:
    lines = [f'    name: "{spec["name"]}"', f"    data_type: {TYPES[spec['dtype']]}"]
    if batch_only:  # (B,) labels: one value per request, seen by the graph as (B,)
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: {_dims(spec['shape'][1:])}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def preferred_batches(max_batch: int) -> list[int]:
    """Powers of two up to max_batch, and max_batch itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes[-3:], max_batch] if sizes else [max_batch]


def config_pbtxt(name: str, manifest: dict, gpu: bool, engine_cache: str) -> str:
    """The model configuration (protobuf text format) for an artifact's manifest."""
    fmt = manifest["format"]
    inputs = [_io(s, s["shape"] == ["batch"]) for s in manifest["inputs"]]
    outputs = [_io(s, False) for s in manifest["outputs"]]
    warm = []
    for s in manifest["inputs"]:
        dims = [1] if s["shape"] == ["batch"] else s["shape"][1:]
        data = "zero_data: true" if s["dtype"] == "int64" else "random_data: true"
        value = f"data_type: {TYPES[s['dtype']]} dims: {_dims(dims)} {data}"
        warm.append(f'    inputs {{ key: "{s["name"]}" value: {{ {value} }} }}')
    text = [
        f'name: "{name}"',
        f'platform: "{PLATFORMS[fmt]}"',
        f"max_batch_size: {manifest['max_batch']}",
        "version_policy: { all { } }",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: {_dims(preferred_batches(manifest['max_batch']))}\n"
        "  max_queue_delay_microseconds: 2000\n}",
        "instance_group [ { count: 1 kind: " + ("KIND_GPU" if gpu else "KIND_CPU") + " } ]",
        'model_warmup [\n  {\n    name: "bns-warmup"\n    batch_size: 1\n' + "\n".join(warm) + "\n  }\n]",
    ]
    if fmt == "onnx" and gpu:
        b_opt, b_max = int(manifest.get("opt_batch") or 1), int(manifest["max_batch"])

        def shapes(b: int) -> str:
            return ",".join(
                f"{s['name']}:" + "x".join(str(d) for d in ([b] if s["shape"] == ["batch"] else [b, *s["shape"][1:]]))
                for s in manifest["inputs"]
            )

        params = {
            "precision_mode": "FP16" if manifest["precision"] == "fp16" else "FP32",
            "max_workspace_size_bytes": str(2 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": engine_cache,
            "trt_profile_min_shapes": shapes(1),
            "trt_profile_opt_shapes": shapes(b_opt),
            "trt_profile_max_shapes": shapes(b_max),
        }
        body = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
        text.append(
            "optimization { execution_accelerators {\n  gpu_execution_accelerator : [ {\n"
            '        name : "tensorrt"\n' + body + "\n  } ]\n} }"
        )
    return "\n".join(text) + "\n"


def write_repository(
    artifacts: list[str | os.PathLike], repo: str | os.PathLike, name: str | None = None, gpu: bool | None = None
) -> Path:
    """Write (or replace) `<repo>/<name>/`: config.pbtxt, versions 1..k (one per artifact, in order), README.md."""
    if not artifacts:
        raise BNSError("give at least one artifact directory")
    manifests = [read_manifest(a) for a in artifacts]
    first = manifests[0]
    for a, m in zip(artifacts, manifests):
        if m["format"] not in PLATFORMS:
            raise BNSError(f"{a}: Triton serves onnx and tensorrt artifacts, not {m['format']!r}")
        for key in ("format", "precision", "max_batch", "inputs", "outputs", "model_fingerprint"):
            if m.get(key) != first.get(key):
                raise BNSError(f"{a}: {key} differs from {artifacts[0]}'s; versions of one model must agree")
    name = name or Path(artifacts[0]).resolve().name
    if not name or "/" in name or name.startswith("."):
        raise BNSError(f"bad model name {name!r}")
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BNSError(f"cannot create repository folder {repo}: {e.strerror}") from None
    gpu = first["format"] == "tensorrt" if gpu is None else gpu
    with staging_dir(repo / name) as staging:
        rows = []
        for version, (a, m) in enumerate(zip(artifacts, manifests), start=1):
            vdir = staging / str(version)
            vdir.mkdir()
            model_file = m["model_file"]
            for f in m["files"]:
                if f == model_file or f.startswith(model_file + "."):  # the model and its external data
                    shutil.copy2(Path(a) / f, vdir / f)
            rows.append(f"| {version} | {m['nfe']} | {m['solver_name']} | {m['solver_fingerprint']} | {a} |")
        cache = f"/tmp/triton-trt-cache/{name}"
        (staging / "config.pbtxt").write_text(config_pbtxt(name, first, gpu, cache))
        names = ", ".join(s["name"] for s in first["inputs"])
        outs = ", ".join(s["name"] for s in first["outputs"])
        (staging / "README.md").write_text(
            f"# {name}\n\nbns-export samplers of one model ({first['model'].get('name', '')}), served as one "
            f"Triton model with a version per solver. Inputs: {names}; outputs: {outs}.\n\n"
            "| version | NFE | solver | solver fingerprint | artifact |\n|---|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n"
        )
    return repo / name
