"""Triton Inference Server model repositories from artifacts: `<repo>/<name>/config.pbtxt` and one version
folder per artifact (`1/model.onnx` or `1/model.plan`, external data beside it), plus a README.

The config is written from the manifest: platform onnxruntime_onnx or tensorrt_plan, max_batch_size,
dims without the batch axis, labels as `dims: [ 1 ]` reshaped to a scalar per request, dynamic
batching, an instance group (GPU when the artifact targets one), a warmup request and, for ONNX
on GPUs, ONNX Runtime's TensorRT accelerator with the artifact's precision, profile shapes from
the batch range and an engine cache.  Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..backends import formats_with, get_backend
from ..backends.base import profile_strings
from ..checks import plain_identifier, read_json
from ..contract import Manifest, TensorSpec
from ..errors import BNSError
from ..fileio import atomic_write_text, honour_umask
from ..interrupts import raise_if_interrupted
from ..sizes import concrete
from .artifact import OpenPolicy, staging_dir

TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def _dims(shape: list) -> str:
    """Triton dims: a named (dynamic) axis is -1."""
    return "[ " + ", ".join("-1" if isinstance(d, str) else str(d) for d in shape) + " ]"


def _io(spec: TensorSpec) -> str:
    lines = [f'    name: "{spec.name}"', f"    data_type: {TYPES[spec.dtype]}"]
    if spec.shape == ():  # (B,) labels or guidance: one value per request, seen by the graph as (B,)
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: {_dims(list(spec.shape))}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def preferred_batches(max_batch: int) -> list[int]:
    """The three largest powers of two from 2 below max_batch, and max_batch itself; never 1: a preferred size
    of 1 lets every lone request run at once, so the queue delay would never form a batch (empty for 1)."""
    sizes, b = [], 2
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sorted({*sizes[-3:], max_batch} - {1})


#: how long a request may wait for a batch: one sampler run is one request's latency, so a short delay
QUEUE_DELAY_US = 2000
#: queued requests per batch slot before Triton rejects new ones (bounded memory under a flood)
QUEUE_PER_SLOT = 8
#: a queued request older than this is rejected (its client has likely given up)
QUEUE_TIMEOUT_US = 60_000_000


def dynamic_batching(max_batch: int) -> str:
    """The dynamic_batching block: preferred sizes without 1, a short delay, and a bounded queue with a timeout
    (docs/deployment.md says why)."""
    preferred = preferred_batches(max_batch)
    lines = ["dynamic_batching {"]
    if preferred:
        lines.append(f"  preferred_batch_size: {_dims(preferred)}")
    lines += [
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}",
        "  default_queue_policy {",
        "    timeout_action: REJECT",
        f"    default_timeout_microseconds: {QUEUE_TIMEOUT_US}",
        "    allow_timeout_override: true",
        f"    max_queue_size: {QUEUE_PER_SLOT * max_batch}",
        "  }",
        "}",
    ]
    return "\n".join(lines)


#: where the repository is mounted in the Triton container, as in NVIDIA's quick start (`-v $PWD/repo:/models`)
CONTAINER_REPO = "/models"
#: the model folder's subfolder for ONNX Runtime's TensorRT engines (not a number: Triton ignores it as a version)
ENGINE_FOLDER = "trt_engines"


def engine_cache_path(name: str, container_repo: str = CONTAINER_REPO) -> str:
    """The TensorRT engine cache inside the container: in the model's own folder, so engines built once survive
    restarts (the repository must be mounted writable for the first build)."""
    if not container_repo.startswith("/") or any(c in container_repo for c in '"\\\n'):
        raise BNSError(f"--container-repo must be an absolute path without quotes, got {container_repo!r}")
    return f"{container_repo.rstrip('/')}/{name}/{ENGINE_FOLDER}"


def config_pbtxt(name: str, manifest: Manifest | dict, gpu: bool, engine_cache: str, trt_profiles: bool = True) -> str:
    """The model configuration (protobuf text format) for an artifact's manifest."""
    manifest = Manifest.of(manifest)
    backend = get_backend(manifest.format)
    sig = manifest.signature
    inputs = [_io(s) for s in sig.inputs]
    outputs = [_io(s) for s in sig.outputs]
    warm = []
    base = manifest.sizes.base if manifest.sizes is not None else None
    for s in sig.inputs:
        dims = [1] if s.shape == () else list(concrete(s.json_shape, 1, base))[1:]  # at the base size
        data = "zero_data: true" if s.dtype == "int64" else "random_data: true"
        value = f"data_type: {TYPES[s.dtype]} dims: {_dims(dims)} {data}"
        warm.append(f'    inputs {{ key: "{s.name}" value: {{ {value} }} }}')
    text = [
        f'name: "{name}"',
        f'platform: "{backend.triton_platform}"',
        f"max_batch_size: {manifest.max_batch}",
        "version_policy: { all { } }",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
        dynamic_batching(manifest.max_batch),
        "instance_group [ { count: 1 kind: " + ("KIND_GPU" if gpu else "KIND_CPU") + " } ]",
        'model_warmup [\n  {\n    name: "bns-warmup"\n    batch_size: 1\n' + "\n".join(warm) + "\n  }\n]",
    ]
    if backend.triton_tensorrt_accelerator and gpu:
        params = {
            "precision_mode": "FP16" if manifest.precision == "fp16" else "FP32",
            "max_workspace_size_bytes": str(2 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": engine_cache,
        }
        if trt_profiles:  # Triton 24.03's ONNX Runtime backend and older reject these: trt_profiles=False
            lo, opt, hi = profile_strings(manifest)
            params.update(trt_profile_min_shapes=lo, trt_profile_opt_shapes=opt, trt_profile_max_shapes=hi)
        body = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
        text.append(
            "optimization { execution_accelerators {\n  gpu_execution_accelerator : [ {\n"
            '        name : "tensorrt"\n' + body + "\n  } ]\n} }"
        )
    return "\n".join(text) + "\n"


#: in a model folder: what this tool wrote there (versions, config digest), so it never touches anything else
RECORD = "bns-export.json"
#: manifest keys every version of one Triton model must share
SIGNATURE_KEYS = ("format", "precision", "max_batch", "inputs", "outputs", "model_fingerprint", "sizes")


def _record(model_dir: Path) -> dict | None:
    """The model folder's record, if this tool wrote the folder: its versions are rows with a version number."""
    if not (model_dir / RECORD).is_file():
        return None
    rec = read_json(model_dir / RECORD, "Triton model record")
    versions = rec.get("versions") if isinstance(rec, dict) else None
    if (
        not isinstance(rec, dict)
        or rec.get("schema") != "bns-export/triton-model"
        or not isinstance(versions, list)
        or not all(isinstance(r, dict) and _version_number(r.get("version")) for r in versions)
    ):
        raise BNSError(f"{model_dir / RECORD} is not a bns-export Triton model record")
    return rec


def _version_number(value) -> int | None:
    """A Triton version: a positive integer (as a folder name, ASCII digits only: '²'.isdigit() is True)."""
    if isinstance(value, str):
        value = int(value) if value.isascii() and value.isdecimal() and len(value) < 19 else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


MODEL_FOLDER_AS_WRITTEN = "a model folder as bns-export wrote it (it holds files its record does not list)"


def _is_ours(model_dir: Path) -> bool:
    """A model folder this tool may replace: empty, or holding only what its record says it wrote (the config,
    README, record, the engine cache and the recorded versions' model files)."""
    if not any(model_dir.iterdir()):
        return True
    try:
        record = _record(model_dir)
    except BNSError:
        return False
    if record is None:
        return False
    versions = {str(r["version"]) for r in record["versions"]}
    for p in model_dir.iterdir():
        if p.name in (RECORD, "config.pbtxt", "README.md") and p.is_file() and not p.is_symlink():
            continue
        if p.name == ENGINE_FOLDER and p.is_dir() and not p.is_symlink():
            continue
        if p.name in versions and p.is_dir() and not p.is_symlink() and _only_model_files(p):
            continue
        return False
    return True


def _only_model_files(vdir: Path) -> bool:
    """A version folder as _copy_version writes it: regular files named model.* only."""
    return all(f.is_file() and not f.is_symlink() and f.name.startswith("model.") for f in vdir.iterdir())


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _copy_version(artifact: Path, manifest: Manifest, vdir: Path) -> None:
    """The artifact's model file and its external data into a version folder, with the umask's modes."""
    model_file = manifest.model_file
    for f in manifest.files:
        if f == model_file or f.startswith(model_file + "."):
            shutil.copyfile(artifact / f, vdir / f)
            honour_umask(vdir / f)
    honour_umask(vdir, directory=True)


def _readme(name: str, first: Manifest, rows: list[dict]) -> str:
    names = ", ".join(first.signature.input_names)
    outs = ", ".join(first.signature.output_names)
    lines = [
        f"| {r['version']} | {r['nfe']} | {r['solver']} | {r['solver_fingerprint']} | {r['artifact']} |" for r in rows
    ]
    return (
        f"# {name}\n\nbns-export samplers of one model ({(first.get('model') or {}).get('name', '')}), served as one "
        f"Triton model with a version per solver. Inputs: {names}; outputs: {outs}.\n\n"
        "| version | NFE | solver | solver fingerprint | artifact |\n|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def write_repository(
    artifacts: list[str | os.PathLike],
    repo: str | os.PathLike,
    name: str | None = None,
    gpu: bool | None = None,
    replace: bool = False,
    log=lambda message: None,
    container_repo: str = CONTAINER_REPO,
    trt_profiles: bool = True,
    policy: OpenPolicy | None = None,
) -> Path:
    """Write `<repo>/<name>/`: config.pbtxt, one version folder per artifact, README.md and its record.

    A new model folder gets versions 1..k.  An existing one that this tool wrote gets the artifacts as
    new versions beside its others (which must be of the same model); a config.pbtxt edited by hand
    since is kept.  replace=True replaces a folder this tool wrote.  A folder it did not write is refused.
    container_repo: where the repository is mounted in the container (the TensorRT engine cache goes into
    the model's folder there); trt_profiles=False leaves out the explicit TensorRT profile options, which
    Triton releases up to 24.03 reject as unknown parameters.  policy: what each artifact must show first (Triton
    runs a TensorRT plan's native code, so plans need a verified key or explicit trust; default from the
    environment, see runtime.OpenPolicy).
    """
    if not artifacts:
        raise BNSError("give at least one artifact directory")
    policy = policy or OpenPolicy.resolve()
    manifests = [policy.open(a) for a in artifacts]
    first = manifests[0]
    for a, m in zip(artifacts, manifests):
        if get_backend(m.format).triton_platform is None:
            served = ", ".join(formats_with("triton_platform"))
            raise BNSError(f"{a}: Triton serves {served} artifacts, not {m.format!r}")
        for key in SIGNATURE_KEYS:
            if m.get(key) != first.get(key):
                raise BNSError(f"{a}: {key} differs from {artifacts[0]}'s; versions of one model must agree")
    name = plain_identifier(name or Path(artifacts[0]).resolve().name, "model name")
    repo = Path(repo)
    model_dir = repo / name
    for a in artifacts:  # `triton A --repo A` would write into the artifact (and break its hashes)
        art = Path(a).resolve()
        target = model_dir.resolve()
        if art == target or art in target.parents or target in art.parents:
            raise BNSError(f"the repository entry {model_dir} overlaps artifact {a}; choose a --repo outside it")
    engine_cache = engine_cache_path(name, container_repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BNSError(f"cannot create repository folder {repo}: {e.strerror}") from None
    gpu = get_backend(first.format).triton_gpu if gpu is None else gpu
    config = config_pbtxt(name, first, gpu, engine_cache, trt_profiles)
    # a key a manifest leaves out (sizes) is left out of the signature too: older records still compare equal
    signature = {k: first.get(k) for k in SIGNATURE_KEYS if first.get(k) is not None}
    rows = [
        {"nfe": m.nfe, "solver": m.get("solver_name"), "solver_fingerprint": m.solver_fingerprint, "artifact": str(a)}
        for a, m in zip(artifacts, manifests)
    ]
    if replace or not model_dir.exists() or not any(model_dir.iterdir()):
        with staging_dir(model_dir, replaceable=_is_ours, what=MODEL_FOLDER_AS_WRITTEN) as staging:
            for version, (a, m, row) in enumerate(zip(artifacts, manifests, rows), start=1):
                row["version"] = version
                (staging / str(version)).mkdir()
                _copy_version(Path(a), m, staging / str(version))
            _write_entry(staging, name, first, config, signature, rows)
            _keep_engine_cache(model_dir, staging)
        return model_dir
    record = _record(model_dir) if model_dir.is_dir() else None
    if record is None:
        raise BNSError(f"{model_dir} exists and was not written by bns-export; refusing to add versions to it")
    if record.get("signature") != signature:
        raise BNSError(f"{model_dir} serves another model (inputs, outputs, precision or fingerprint differ)")
    (model_dir / ENGINE_FOLDER).mkdir(exist_ok=True)
    taken = [v for v in (_version_number(p.name) for p in model_dir.iterdir()) if v is not None]
    start = max(taken, default=0) + 1
    for version, (a, m, row) in enumerate(zip(artifacts, manifests, rows), start=start):
        row["version"] = version
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.bns-partial-", dir=model_dir))
        try:
            _copy_version(Path(a), m, tmp)
            raise_if_interrupted()
            os.rename(tmp, model_dir / str(version))  # fails (one line) if another writer took the number
        except OSError as e:
            raise BNSError(f"cannot add version {version} to {model_dir}: {e.strerror}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    ours = _digest(model_dir / "config.pbtxt") in (record.get("config_sha256"), None)
    if not ours:
        log(f"kept {model_dir / 'config.pbtxt'}: it was edited since bns-export wrote it")
    _write_entry(model_dir, name, first, config if ours else None, signature, record["versions"] + rows, record)
    return model_dir


def _keep_engine_cache(model_dir: Path, staging: Path) -> None:
    """The engine folder Triton filled (or an empty one) goes into the new model folder: replacing a model's
    versions never throws away the engines ONNX Runtime built (they are keyed by the graph; stale ones
    are never used)."""
    old = model_dir / ENGINE_FOLDER
    if old.is_dir() and not old.is_symlink():
        os.rename(old, staging / ENGINE_FOLDER)
    else:
        (staging / ENGINE_FOLDER).mkdir()


def _write_entry(
    folder: Path, name: str, first: Manifest, config: str | None, signature: dict, rows: list, record=None
):
    """config.pbtxt (when given), README.md and the record of what this tool wrote, each atomically."""
    if config is not None:
        atomic_write_text(folder / "config.pbtxt", config)
    readme = folder / "README.md"
    if record is None or _digest(readme) in (record.get("readme_sha256"), None):
        atomic_write_text(readme, _readme(name, first, rows))
    rec = {
        "schema": "bns-export/triton-model",
        "version": 1,
        "signature": signature,
        "versions": rows,
        "config_sha256": _digest(folder / "config.pbtxt") if config is not None else record.get("config_sha256"),
        "readme_sha256": _digest(readme),
    }
    atomic_write_text(folder / RECORD, json.dumps(rec, indent=2) + "\n")
