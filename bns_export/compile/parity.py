"""Parity of an artifact against the eager PyTorch sampler: two runners and one comparison.

The reference is a runner too (`EagerRunner`): it rebuilds the eager sampler from the manifest
(same model spec, same solver file, fp32).  Both run on the same fixed seeds at batch 1 and at
the artifact's maximum batch (and, for conditional models, with every label -1, the
unconditional branch; for a family, across its guidance range; with declared sizes, at each other
size, or a range's corners); `compare` reports per-sample PSNR (min and median), max absolute error,
and each one's PSNR against the dopri5 ground truth.  With a decoder in the graph every case is
compared on both outputs, the latents ("sample") and the decoded images ("image", data range 2).
Gate: min per-sample PSNR >= 60 dB for fp32 artifacts, >= 35 dB for fp16 (Core ML's gate).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..backends import Runner, get_backend
from ..backends.base import is_torch
from ..backends.cuda_graph import CudaGraphs, check_cuda_graph_device
from ..checks import number
from ..contract import GUIDANCE_INPUT, TABLE_INPUT, Manifest
from ..devices import full_fp32
from ..errors import EXIT_MISSING_BACKEND, BNSError
from ..groundtruth import SEEDS, ground_truth, make_inputs
from ..loaders import ModelSpec, load_model
from ..loaders.decoders import load_decoder
from ..loaders.spec import decoder_runs_code
from ..metrics import psnr_per_sample
from ..runtime.artifact import OpenPolicy
from ..solvers import load_solver
from .unroll import UnrolledSampler

GATES = {"fp32": 60.0, "fp16": 35.0}


class EagerRunner(Runner):
    """The reference: the eager fp32 PyTorch sampler rebuilt from an artifact's manifest (or `spec`)."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest | dict,
        device: str = "cpu",
        spec: ModelSpec | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(folder, manifest)
        manifest = self.manifest
        if cuda_graph:
            check_cuda_graph_device(device)
        spec = spec or ModelSpec.from_json(manifest.model_spec)
        self.field = load_model(spec, guidance=manifest.traced_guidance).to(device)
        if self.field.fingerprint() != manifest.model_fingerprint:
            raise BNSError(
                f"model {spec.model} changed since export (fingerprint {self.field.fingerprint()}, "
                f"artifact {manifest.model_fingerprint})"
            )
        solver = load_solver(self.folder / manifest.solver_file)
        if solver.fingerprint() != manifest.solver_fingerprint:
            raise BNSError("the artifact's solver file does not match its manifest")
        tables = [load_solver(self.folder / e.file) for e in manifest.tables]
        if [t.fingerprint() for t in tables] != [e.fingerprint for e in manifest.tables]:
            raise BNSError("the artifact's table files do not match its manifest")
        if tables and cuda_graph:
            raise BNSError("a loop artifact's reference runs without CUDA graphs")
        self.device = device
        decoder = None
        if manifest.decoder:
            if not spec.options.decoder:
                raise BNSError("the manifest records a decoder but its model_spec names none")
            decoder = load_decoder(spec.options.decoder, spec, self.field.sample_shape)
            if decoder.fingerprint() != manifest.decoder.get("fingerprint"):
                raise BNSError(
                    f"decoder {spec.options.decoder} changed since export (fingerprint {decoder.fingerprint()})"
                )
        #: one eager sampler per table: the baked one, or each table a loop artifact serves (ns_sample unrolled)
        self.samplers = [
            UnrolledSampler(self.field, table, decoder=decoder).eval().float().to(device)
            for table in tables or [solver]
        ]
        self.sampler = self.samplers[0]
        #: cuda_graph: the eager sampler captured once per batch size and replayed (torch.cuda graphs)
        self._graphed = CudaGraphs(self.sampler.sample, device) if cuda_graph else None

    def infer(self, noise, condition, guidance=None, table=None) -> dict:
        if table is None:
            return self._infer(self.sampler, noise, condition, guidance)
        out: dict = {}
        for k in np.unique(table).tolist():  # each table's samples through that table's own eager sampler
            rows = np.flatnonzero(table == k)

            def pick(v, rows=rows):
                return v[torch.as_tensor(rows, device=v.device)] if is_torch(v) else v[rows]

            part = {n: pick(v) for n, v in condition.items()} if condition is not None else None
            for name, v in self._infer(self.samplers[k], pick(noise), part, guidance).items():
                out.setdefault(name, torch.empty((len(table), *v.shape[1:]), dtype=v.dtype, device=v.device))[rows] = v
        return out

    def _infer(self, sampler: UnrolledSampler, noise, condition, guidance=None) -> dict:
        x = torch.as_tensor(noise, dtype=torch.float32).to(self.device)
        lab = None
        if condition is not None:  # the graph's record -> the loop's one condition tensor
            record = self.condition_tensors(condition, self.device)
            lab = self.field.condition_layout.pack(record) if self.named_conditions else record[self.condition_name]
        w = None if guidance is None else self._float_tensor(guidance, self.device)
        with full_fp32():
            if self._graphed is None:
                return sampler.named(x, lab, w)
            out = self._graphed(*(v for v in (x, lab, w) if v is not None))
            return dict(zip(self.sampler.output_names, out if isinstance(out, tuple) else (out,)))


def reference_spec(
    manifest: Manifest, model: str | None = None, decoder: str | None = None, trust_model_spec: bool = False
) -> ModelSpec:
    """The model spec the reference is rebuilt from: the manifest's, with `model` / `decoder` from the user.

    An artifact is data from elsewhere: code its manifest names (a module:factory model or decoder)
    is imported only when the user names it (`model`, `decoder`) or says `trust_model_spec`.
    """
    recorded = ModelSpec.from_json(manifest.model_spec)
    if decoder is not None and not manifest.decoder:
        raise BNSError("this artifact has no decoder in its graph: --decoder does not apply")
    options = recorded.options if decoder is None else replace(recorded.options, decoder=decoder)
    spec = ModelSpec(model if model is not None else recorded.model, options)
    named_by_artifact = []
    if model is None and recorded.kind == "factory":
        named_by_artifact.append(f"model {recorded.model!r}")
    if decoder is None and decoder_runs_code(recorded.options.decoder):
        named_by_artifact.append(f"decoder {recorded.options.decoder!r}")
    if named_by_artifact and not trust_model_spec:
        raise BNSError(
            f"the artifact's manifest names code to import ({' and '.join(named_by_artifact)}); validation never "
            "runs code an artifact names: give it yourself (validate -m SPEC [--decoder SPEC]) or pass "
            "--trust-model-spec"
        )
    return spec


def default_device(manifest: Manifest) -> str:
    """Where an artifact runs unless told: its format's device (TensorRT: cuda), else its build device."""
    return get_backend(manifest.format).default_device or manifest.device or "cpu"


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per-sample PSNR of `out` against `ref` (-inf where `out` is not finite) and the max abs error."""
    out, ref = out.detach().cpu(), ref.detach().cpu()
    if not torch.isfinite(out).all():
        psnr = torch.full((out.shape[0],), float("-inf"), dtype=torch.float64)
    else:
        psnr = psnr_per_sample(out, ref)
    return {
        "psnr_min": float(psnr.min()),
        "psnr_median": float(psnr.median()),
        "max_abs_error": float((out.double() - ref.double()).abs().max()),
    }


def check_conformance(folder: Path, manifest: Manifest, runner: Runner) -> list[dict]:
    """The artifact's outputs on its stored conformance inputs against the stored eager reference's."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    name = manifest.conformance["file"]
    if name not in manifest.files or name == manifest.model_file:
        raise BNSError(f"conformance file {name!r} is not among the hashed files, or is the model file")
    try:
        d = load_file(str(folder / name))
    except (SafetensorError, OSError, ValueError) as e:
        raise BNSError(
            f"conformance file {name!r} is not a safetensors file ({str(e).splitlines()[0][:120]})"
        ) from None
    if "noise" not in d:
        raise BNSError(f"conformance file {name!r} holds no noise")
    cond = {k: d[k] for k in runner.condition_names if k in d} or None  # the graph's condition record
    out = runner.run(d["noise"], cond, d.get(GUIDANCE_INPUT), d.get(TABLE_INPUT))
    missing = [k for k in out if k not in d]
    if missing:
        raise BNSError(f"conformance file {name!r} holds no reference {', '.join(missing)}")
    return rows_for("conformance vectors", out, {k: d[k] for k in out}, int(d["noise"].shape[0]))


def rows_for(case: str, out: dict, ref: dict, batch: int) -> list[dict]:
    """One comparison row per output (the sample, and the image when a decoder is in the graph)."""
    return [
        {
            "case": case if len(out) == 1 else f"{case}: {key}",
            "output": key,
            "batch": batch,
            **compare(_on_host(out[key]), _on_host(ref[key])),
        }
        for key in out
    ]


def _on_host(x) -> torch.Tensor:
    """A runner's output as a tensor: numpy becomes one; torch (on any device) stays as it is."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def open_artifact(
    folder: Path, manifest: Manifest | dict, device: str, providers: list | None, cuda_graph: bool = False
) -> Runner:
    """The artifact's runner on `device`; an ONNX artifact falls back to the CPU where ONNX Runtime has no
    CUDA provider (the CPU build on a GPU machine), so the reference still runs on the GPU.
    cuda_graph: the artifact's CUDA-graph path (ONNX Runtime's on the CUDA EP, ours for AOTInductor).
    Otherwise a lean session where the backend has one: transient buffers freed after each run."""
    manifest = Manifest.of(manifest)
    backend = get_backend(manifest.format)
    lean = {"low_memory": True} if "low_memory" in backend.extras else {}  # parity is not a latency test
    if cuda_graph:
        check_cuda_graph_device(device)
        return backend.open(folder, manifest, device=device, providers=providers, cuda_graph=True)
    try:
        return backend.open(folder, manifest, device=device, providers=providers, **lean)
    except BNSError as e:
        if e.exit_code != EXIT_MISSING_BACKEND or not backend.cpu_fallback or providers is not None:
            raise
        return backend.open(folder, manifest, device="cpu", providers=None, **lean)


@dataclass(frozen=True)
class Case:
    """One parity case: its name, the inputs both runners get, and whether the ground truth scores it."""

    name: str
    noise: torch.Tensor
    condition: object = None  # the condition tensor, or the graph's named record
    guidance: torch.Tensor | None = None
    scored: bool = False
    table: torch.Tensor | None = None  # a loop artifact's table index per sample (None: table 0)

    def run(self, runner: Runner) -> dict:
        return runner.run(self.noise, self.condition, self.guidance, self.table)


def reference_outputs(
    reference: EagerRunner, n: int, with_gt: bool = True
) -> tuple[list[Case], list[dict], torch.Tensor | None]:
    """The parity cases (batch 1, batch n when n > 1, unconditional) on the ground truth's seeded inputs, the eager
    reference's outputs for each (on the host) and the ground truth's samples (None without with_gt: the same
    seeded inputs, unsolved), so that the reference can be freed before the artifact is loaded."""
    if with_gt:
        gt = ground_truth(reference.field, n, SEEDS.validate)
        noise, condition, x1 = gt.noise, gt.condition, gt.x1.float().cpu()
    else:
        noise, condition = make_inputs(reference.field, n, SEEDS.validate, reference.field.default_dtype)
        x1 = None
    noise = noise.float().to(reference.device)
    condition = None if condition is None else condition.to(reference.device)
    if condition is not None and condition.is_floating_point():
        condition = condition.float()
    # a family's graph takes guidance: the GT's (the field's scale) for the GT cases, then the whole range
    rng = reference.guidance_range
    w = None if rng is None else torch.full((n,), float(reference.field.guidance))
    cases = [
        Case("batch 1", noise[:1], None if condition is None else condition[:1], None if w is None else w[:1], True)
    ]
    if n > 1:  # at max batch 1 the batch-n case is the batch-1 case: run once
        cases.append(Case(f"batch {n}", noise, condition, w, True))
    if condition is not None:
        null = reference.field.null_condition(condition)  # label -1, or the null tensor condition
        cases.append(Case(f"batch {n}, unconditional", noise, null.to(condition.dtype), w))
    if rng is not None:
        spread = torch.linspace(rng[0], rng[1], max(n, 2))[:n] if n > 1 else torch.tensor([sum(rng) / 2])
        cases.append(Case(f"batch {n}, guidance {rng[0]:g}..{rng[1]:g}", noise, condition, spread))
    for size in other_sizes(reference):  # every other declared size: the same conditions, seeded noise there
        x = torch.randn((n, *noise.shape[1:-2], *size), generator=torch.Generator().manual_seed(SEEDS.validate))
        cases.append(Case(f"batch {n}, size {size[0]}x{size[1]}", x.to(noise.device), condition, w))
    cases.extend(table_cases(reference.tables, noise, condition))
    if reference.named_conditions:  # the GT's one condition tensor -> the graph's named inputs
        layout = reference.field.condition_layout
        cases = [replace(c, condition=layout.unpack(c.condition)) for c in cases]
    refs = [{k: _on_host(v).cpu() for k, v in c.run(reference).items()} for c in cases]
    return cases, refs, x1


def table_cases(tables, noise: torch.Tensor, condition) -> list[Case]:
    """A loop artifact's other tables, each on the whole batch, and with several tables the batch mixing them
    (each sample its own table, the loop running the largest NFE)."""
    n = noise.shape[0]
    cases = [
        Case(f"batch {n}, table {k} {e.name} (NFE {e.nfe})", noise, condition, table=torch.full((n,), k))
        for k, e in enumerate(tables)
        if k
    ]
    if len(tables) > 1 and n > 1:
        cases.append(Case(f"batch {n}, tables mixed", noise, condition, table=torch.arange(n) % len(tables)))
    return cases


def other_sizes(runner: Runner) -> tuple[tuple[int, int], ...]:
    """The declared sizes parity also runs at besides the base (a range's corners), none without sizes."""
    return () if runner.sizes is None else tuple(s for s in runner.sizes.probes() if s != runner.sizes.base)


def validate_artifact(
    folder: str | Path,
    min_psnr: float | None = None,
    device: str | None = None,
    providers: list | None = None,
    public_key: str | None = None,
    model: str | None = None,
    decoder: str | None = None,
    trust_model_spec: bool = False,
    cuda_graph: bool = False,
    ground_truth: bool = True,
    require_signature: bool | None = None,
    trust_engine_code: bool = False,
    policy: OpenPolicy | None = None,
) -> dict:
    """Run the parity report; `passed` is the gate's verdict.  ground_truth=False: parity only, without the
    dopri5 solution both samplers are also scored against.  public_key, require_signature, trust_engine_code:
    what the artifact must show before it is opened (runtime.OpenPolicy; `policy` gives one whole).

    model / decoder: the specs to rebuild the eager reference from (default: the manifest's, which
    may name code to import only with trust_model_spec; see `reference_spec`).  cuda_graph: validate the
    artifact's CUDA-graph path (a CUDA device only).
    """
    if min_psnr is not None:
        min_psnr = number(min_psnr, "min_psnr", 0, 1000)
    folder = Path(folder)
    policy = policy or OpenPolicy.resolve(public_key, require_signature, trust_engine_code)
    manifest = policy.open(folder)
    spec = reference_spec(manifest, model, decoder, trust_model_spec)
    device = device or default_device(manifest)
    reference = EagerRunner(folder, manifest, device, spec)
    cases, refs, x1 = reference_outputs(reference, manifest.max_batch, ground_truth)
    del reference
    gc.collect()  # the reference's weights go before the artifact's are loaded: never two copies at once
    runner = open_artifact(folder, manifest, device, providers, cuda_graph)
    gate = float(min_psnr) if min_psnr is not None else GATES[manifest.precision]
    rows = []
    for case, ref in zip(cases, refs):
        out = case.run(runner)
        case_rows = rows_for(case.name, out, ref, int(case.noise.shape[0]))
        if (
            case.scored and x1 is not None
        ):  # the ground truth is the ODE's solution: the sample (latents), not the image
            truth = x1[: case.noise.shape[0]]
            case_rows[0]["artifact_psnr_vs_gt"] = float(psnr_per_sample(out["sample"].cpu(), truth).mean())
            case_rows[0]["eager_psnr_vs_gt"] = float(psnr_per_sample(ref["sample"].cpu(), truth).mean())
        rows.extend(case_rows)
    if manifest.conformance:
        rows.extend(check_conformance(folder, manifest, runner))
    psnr_min = min(r["psnr_min"] for r in rows)
    report = {
        "artifact": str(folder),
        "format": manifest.format,
        "precision": manifest.precision,
        "nfe": manifest.nfe,
        "device": device,
        "artifact_device": runner.device,
        "gate_db": gate,
        "psnr_min": psnr_min,
        "psnr_median": float(np.median([r["psnr_median"] for r in rows])),
        "max_abs_error": max(r["max_abs_error"] for r in rows),
        "cases": rows,
        "passed": bool(psnr_min >= gate),
        "cuda_graph": cuda_graph,
        "seed": SEEDS.validate,
        "ground_truth": ground_truth,
    }
    report.update(get_backend(manifest.format).validation_extras(folder, manifest))
    return report
