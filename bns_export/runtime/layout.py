"""An artifact folder's layout: its fixed file names and the one Manifest type that the writer
(compile/build.py) fills and the reader (runtime/artifact.py) checks field by field."""

from __future__ import annotations

from typing import TypedDict

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
UNHASHED = (MANIFEST, SIGNATURE)


class Manifest(TypedDict, total=False):
    """manifest.json: what the graph is (format, precision, inputs and outputs), what it was built from
    (model, solver, guidance; their fingerprints), how it was checked, and every file's sha256."""

    schema: str
    schema_version: int
    format: str  # a BACKENDS key
    precision: str  # fp32 | fp16
    nfe: int
    guidance: float | None  # None: a guidance family, whose graph takes guidance (B,) in guidance_range
    guidance_range: list[float] | None
    max_batch: int
    opt_batch: int
    sample_shape: list[int]  # one sample's shape at the size the solver was distilled at
    sizes: dict | None  # sizes.SizeSet.to_json(): the spatial sizes the graph takes, None: sample_shape only
    num_classes: int | None
    cond_shape: list[int] | None
    inputs: list[dict]  # {name, dtype, shape: ["batch", ...], ...}
    outputs: list[dict]
    model_file: str
    solver_file: str
    solver_fingerprint: str
    solver_name: str
    model_fingerprint: str
    model: dict
    decoder: dict | None
    model_spec: dict  # loaders.ModelSpec.to_json(): what validation rebuilds the reference from
    refit_from: str  # `bns-export refit`: the model fingerprint of the artifact whose graph this one reuses
    interval: list[float]
    init_scale: float
    guidance_note: str
    tool_version: str
    versions: dict[str, str]
    created: str
    device: str  # the AOTInductor package's target device
    graph: dict  # the ONNX graph's statistics
    tensorrt_support: dict
    conformance: dict
    validation: dict
    files: dict[str, str]  # file name -> sha256
