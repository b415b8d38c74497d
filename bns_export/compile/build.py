"""compile_artifact: model + solver -> unrolled sampler -> backend export -> manifest -> parity -> publish.

The format is looked up once in the backend table; the staging directory becomes the artifact
only after validation passes, so a failed or interrupted build leaves nothing that looks complete.
"""

from __future__ import annotations

import copy
import datetime
import gc
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import __version__
from ..backends import LIBRARIES, REFITTABLE_FORMATS, ExportRequest, formats_with, get_backend
from ..backends.base import GRAPH_METADATA
from ..checks import integer, number
from ..contract import GUIDANCE_INPUT, TABLE_INPUT, ConditionKind, Signature, TableEntry, TensorSpec, traced_guidance
from ..errors import EXIT_PARITY_FAILED, BNSError
from ..fields import GuidedField, NetworkField
from ..groundtruth import SEEDS
from ..loaders import ModelOptions, ModelSpec, load_model
from ..loaders.decoders import load_decoder
from ..runtime.artifact import OpenPolicy, check_replaceable, staging_dir, write_manifest
from ..sizes import SizeSet, parse_sizes
from ..solvers import (
    SolverFamily,
    SolverLike,
    Table,
    guidance_for,
    parse_spec,
    resolve_solver,
    resolve_table,
    solver_guidance,
)
from ..solvers.table import MAX_NFE, NSSolver
from .loop import LoopSampler
from .unroll import OUTPUTS, UnrolledSampler


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    return versions


def check_halvable(field: GuidedField) -> None:
    """--fp16 halves a network's weights; an analytic field has none."""
    if not isinstance(field.field, NetworkField):
        raise BNSError("--fp16 needs a network model; analytic fields have no weights to halve")


def half_precision(field: GuidedField) -> GuidedField:
    """The field with its network halved in place (the fp32 weights are freed, not copied: a big model
    is never held twice); conversions, guidance and the solver stay fp32."""
    check_halvable(field)
    field.field.net.half()
    field.field.net_dtype = torch.float16
    return field


def signature_of(
    field, decoder=None, guidance_range=None, sizes: SizeSet | None = None, tables: tuple[TableEntry, ...] = ()
) -> Signature:
    """The graph's signature, built once per compile: noise; the condition (one input per named condition,
    `cond`, or `labels`); a family's guidance or a loop graph's table index; the sample (and the image with a
    decoder).  With `sizes` the spatial axes of noise, sample and image are named (dynamic)."""
    layout = field.condition_layout
    if layout is not None and not layout.legacy:
        note = "one per sample; its null value for the unconditional branch"
        conditions = [TensorSpec(part.name, "float32", tuple(part.shape), note) for part in layout.parts]
    elif field.cond_shape is not None:
        note = "one condition per sample (e.g. a prompt embedding); the null condition for unconditional"
        conditions = [TensorSpec("cond", "float32", tuple(field.cond_shape), note)]
    elif field.num_classes is not None:
        conditions = [TensorSpec("labels", "int64", (), f"0..{field.num_classes - 1}, or -1 for unconditional")]
    else:
        conditions = []
    shape = tuple(field.sample_shape)
    noise = TensorSpec("noise", "float32", shape)
    if decoder is None:
        outputs = [TensorSpec(OUTPUTS[0], "float32", shape)]
    else:
        image_note = f"the decoded image ({decoder.source}), in the decoder's range (diffusers: [-1, 1])"
        outputs = [
            TensorSpec(OUTPUTS[0], "float32", shape, "the latents"),
            TensorSpec(OUTPUTS[1], "float32", tuple(decoder.image_shape), image_note),
        ]
    if sizes is not None:
        note = f"spatial sizes {sizes.describe()} (sample units)"

        def dynamic(spec: TensorSpec) -> TensorSpec:
            dims = tuple(sizes.symbolic(spec.shape, image=spec.name == OUTPUTS[1]))
            return replace(spec, shape=dims, note=f"{spec.note}; {note}" if spec.note else note)

        noise, outputs = dynamic(noise), [dynamic(o) for o in outputs]
    guidance = None
    if guidance_range is not None:
        lo, hi = guidance_range
        note = f"the guidance scale per sample, {lo:g}..{hi:g}: the solver family is interpolated there"
        guidance = TensorSpec(GUIDANCE_INPUT, "float32", (), note)
    table = None
    if tables:
        choices = ", ".join(f"{i} {e.name} (NFE {e.nfe})" for i, e in enumerate(tables))
        table = TensorSpec(TABLE_INPUT, "int64", (), f"the solver table each sample runs: {choices}")
    return Signature(noise, tuple(conditions), guidance, tuple(outputs), table)


CONFORMANCE_FILE = "conformance.safetensors"


def write_conformance(folder: Path, reference: UnrolledSampler, request: ExportRequest) -> dict:
    """Conformance vectors any runtime can check: fixed noise (and labels, one of them -1) and the eager
    fp32 reference's samples, in safetensors (a JSON header and raw little-endian arrays)."""
    from safetensors.torch import save_file

    batch = min(4, request.max_batch)
    g = torch.Generator().manual_seed(SEEDS.conformance)
    noise = torch.randn((batch, *request.sample_shape), generator=g)
    tensors = {"noise": noise}
    condition = None
    kind = request.signature.kind
    if kind is ConditionKind.LABELS:
        condition = torch.randint(0, reference.field.num_classes, (batch,), generator=g)
        condition[-1] = -1
        tensors["labels"] = condition
    elif kind is not ConditionKind.NONE:
        idx = torch.randint(0, reference.field.cond_set.shape[0], (batch,), generator=g)
        condition = reference.field.cond_set.detach().cpu()[idx].float()
        condition[-1] = reference.field.null_cond.detach().cpu()
        if kind is ConditionKind.NAMED:  # one tensor per name, as the graph takes them
            tensors.update(reference.field.condition_layout.unpack(condition))
        else:
            tensors["cond"] = condition
    guidance = None
    if request.guidance_range is not None:  # several scales across the family's range, one per sample
        lo, hi = request.guidance_range
        guidance = torch.linspace(lo, hi, batch) if batch > 1 else torch.tensor([(lo + hi) / 2])
        tensors[GUIDANCE_INPUT] = guidance
    controls = (guidance,)
    if request.signature.table is not None:  # a loop graph: every table, one per sample in turn
        tensors[TABLE_INPUT] = torch.arange(batch) % len(reference.tables.nfe)
        controls = (None, tensors[TABLE_INPUT])
    device = next(iter(reference.buffers())).device
    outputs = reference.named(*(None if v is None else v.to(device) for v in (noise, condition, *controls)))
    inputs = sorted(tensors)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    tensors.update({k: v.float().cpu().contiguous() for k, v in outputs.items()})
    save_file(tensors, str(folder / CONFORMANCE_FILE), metadata={"schema": "bns-export/conformance", "version": "1"})
    return {
        "file": CONFORMANCE_FILE,
        "batch": batch,
        "seed": SEEDS.conformance,
        "inputs": inputs,
        "outputs": list(outputs),
    }


@dataclass(frozen=True)
class BuildInputs:
    """What an artifact is built from, loaded once: the model's field at the solver's guidance, the solver
    checked against it, the decoder (or None) and the model spec the manifest records."""

    spec: ModelSpec
    field: GuidedField
    solver: Table
    decoder: torch.nn.Module | None
    guidance: float | None  # None: a guidance family, which the graph takes per sample
    sizes: SizeSet | None = None  # the spatial sizes the graph takes (None: the sample shape only)
    #: a loop graph's tables (the first is `solver`) and the largest NFE it runs; empty: one table, unrolled
    tables: tuple[NSSolver, ...] = ()
    max_nfe: int | None = None

    @property
    def guidance_range(self) -> tuple[float, float] | None:
        return self.solver.guidance_range if isinstance(self.solver, SolverFamily) else None

    @property
    def table_entries(self) -> tuple[TableEntry, ...]:
        """A loop graph's tables as the manifest lists them: solver.json first, then solver-1.json, ..."""
        files = [TABLE_FILE.format(i) if i else "solver.json" for i in range(len(self.tables))]
        return tuple(TableEntry(f, t.name, t.nfe, t.fingerprint()) for f, t in zip(files, self.tables))

    def save_tables(self, folder: Path) -> None:
        """Every table file the manifest names (the one solver.json of an unrolled graph)."""
        for entry, table in zip(self.table_entries, self.tables):
            table.save(folder / entry.file)
        if not self.tables:
            self.solver.save(folder / "solver.json")


#: where a loop graph's table k > 0 is stored in the artifact
TABLE_FILE = "solver-{}.json"


def load_build_inputs(
    model: str,
    solver: SolverLike,
    options: ModelOptions,
    guidance: float | None,
    nfe: int | None,
    sizes: str | None = None,
    loop: bool = False,
    max_nfe: int | None = None,
) -> BuildInputs:
    """The model, the solver (a solver file read once), the decoder and the declared sizes (`--sizes`, in
    image pixels with a decoder); guidance None: the solver file's, or for a guidance family none (the graph
    takes it per sample; -w bakes the family's table at w).  loop: `solver` is a list of tables for one loop
    graph running up to `max_nfe` (default their largest NFE)."""
    specs = list(solver) if isinstance(solver, (list, tuple)) else [solver]
    looped = " or ".join(f"--format {name}" for name in formats_with("loop"))
    if not specs or (len(specs) > 1 and not loop):
        raise BNSError(f"several solver tables compile into one graph with {looped}; give one solver here")
    if max_nfe is not None and not loop:
        raise BNSError(f"--max-nfe applies to {looped}")
    spec = ModelSpec(model, options)
    parsed = [parse_spec(s) for s in specs]
    solver = parsed[0]
    family = solver.family if guidance is None and not loop else None
    baked = traced_guidance(family.guidance_range, None) if family else guidance_for(solver, guidance)
    if loop and guidance is None:  # one graph bakes one scale: the files' (a classic solver has none of its own)
        scales = sorted({w for w in (solver_guidance(p) for p in parsed) if w is not None})
        if len(scales) > 1:
            shown = ", ".join(f"{w:g}" for w in scales)
            raise BNSError(f"the tables were distilled at guidance {shown}: one graph bakes one scale (pass -w)")
        baked = scales[0] if scales else 1.0
    field = load_model(spec, guidance=baked)
    tables: tuple[NSSolver, ...] = ()
    if loop:  # --nfe is the classic solvers' (a file states its own)
        tables = tuple(resolve_solver(p, field, None if p.is_file else nfe) for p in parsed)
        ns = tables[0]
    else:
        ns = resolve_table(solver, field, nfe) if family else resolve_solver(solver, field, nfe)
    decoder = load_decoder(options.decoder, spec, field.sample_shape) if options.decoder else None
    size_set = None if sizes is None else declared_sizes(sizes, field, decoder)
    steps = loop_steps(tables, max_nfe) if loop else None
    return BuildInputs(spec, field, ns, decoder, None if family else baked, size_set, tables, steps)


def loop_steps(tables: tuple[NSSolver, ...], max_nfe: int | None) -> int:
    """The most steps a loop graph runs: `max_nfe` (--max-nfe), at least the largest table's NFE (the default)."""
    largest = max(t.nfe for t in tables)
    steps = largest if max_nfe is None else integer(max_nfe, "max_nfe", 1, MAX_NFE)
    if steps < largest:
        raise BNSError(f"--max-nfe {steps} is below the largest table's NFE {largest}")
    return steps


def declared_sizes(text: str, field, decoder=None) -> SizeSet:
    """`--sizes` for this model: in sample units, or image pixels when a decoder upsamples the sample."""
    shape = tuple(field.sample_shape)
    if len(shape) < 3:
        raise BNSError(f"--sizes needs an image model (C, H, W); this one samples shape {shape}")
    scale = 1
    if decoder is not None:
        img = decoder.image_shape
        scale = img[-1] // shape[-1]
        if img[-2:] != (shape[-2] * scale, shape[-1] * scale):
            raise BNSError(f"--sizes: the decoder maps {shape} to {img}, not a whole upsampling of both axes")
    return parse_sizes(text, shape[-2:], field.size_step, scale, limit=field.size_limit)


def export_request(
    built: BuildInputs,
    max_batch: int,
    opt_batch: int,
    device: str,
    workspace_bytes: int,
    timing_cache: str | None,
    refittable: bool = False,
) -> ExportRequest:
    """The backend's view of the build: the graph's signature (built here, once), the batch profile and where to
    trace."""
    return ExportRequest(
        sample_shape=tuple(built.field.sample_shape),
        signature=signature_of(built.field, built.decoder, built.guidance_range, built.sizes, built.table_entries),
        max_batch=max_batch,
        opt_batch=opt_batch,
        device=device,
        workspace_bytes=workspace_bytes,
        timing_cache=timing_cache,
        refittable=refittable,
        guidance_range=built.guidance_range,
        sizes=built.sizes,
        tables=len(built.tables),
    )


def new_manifest(fmt: str, precision: str, built: BuildInputs, request: ExportRequest) -> dict:
    """The manifest of an artifact about to be exported (files, conformance and validation come later): the JSON
    object contract.Manifest reads back."""
    backend, field, ns, decoder = get_backend(fmt), built.field, built.solver, built.decoder
    inputs, outputs = request.signature.to_json()
    rng = built.guidance_range
    note = "guidance is baked in: both branches run in one batched network call per step"
    if rng is not None:
        note = (
            f"guidance is an input (B,) in {rng[0]:g}..{rng[1]:g}: the family's tables are interpolated per sample "
            "in the graph; both branches run in one batched network call per step"
        )
    return dict(
        format=fmt,
        precision=precision,
        nfe=built.max_nfe or ns.nfe,
        guidance=None if built.guidance is None else float(built.guidance),
        guidance_range=None if rng is None else list(rng),
        max_batch=request.max_batch,
        opt_batch=request.opt_batch,
        sample_shape=list(field.sample_shape),
        sizes=None if built.sizes is None else built.sizes.to_json(),
        num_classes=field.num_classes,
        cond_shape=None if field.cond_shape is None else list(field.cond_shape),
        inputs=inputs,
        outputs=outputs,
        model_file=backend.model_file,
        solver_file="solver.json",
        solver_fingerprint=ns.fingerprint(),
        solver_name=ns.name,
        model_fingerprint=field.fingerprint(),
        model=field.describe(),
        decoder=None if decoder is None else {**decoder.describe(), "fingerprint": decoder.fingerprint()},
        model_spec=built.spec.to_json(),
        interval=[field.t_lo, field.t_hi],
        init_scale=field.init_scale,
        guidance_note=note,
        tool_version=__version__,
        versions=library_versions(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **({"tables": [e.to_json() for e in built.table_entries]} if built.tables else {}),
    )


def export_sampler(built: BuildInputs, fp16: bool, export_device: str) -> UnrolledSampler:
    """The module the backend traces: the unrolled loop over the network (with --fp16 the network is
    halved in place, so the fp32 reference must have been used first; an analytic field in fp32, as the
    artifact computes)."""
    field = half_precision(built.field) if fp16 else built.field
    if built.field.default_dtype == torch.float64:
        field = copy.deepcopy(field).float()
    return sampler_of(built, field).eval().to(export_device)


def reference_sampler(built: BuildInputs) -> UnrolledSampler:
    """The eager fp32 sampler the conformance vectors come from."""
    field = copy.deepcopy(built.field).float() if built.field.default_dtype == torch.float64 else built.field
    return sampler_of(built, field).eval()


def sampler_of(built: BuildInputs, field) -> UnrolledSampler:
    """The module of the build's graph: the loop over its tables, or its one table unrolled."""
    if built.tables:
        return LoopSampler(field, list(built.tables), built.max_nfe, decoder=built.decoder)
    return UnrolledSampler(field, built.solver, decoder=built.decoder)


def compile_artifact(
    model: str,
    solver: SolverLike,
    fmt: str,
    out: str | Path,
    *,
    options: ModelOptions | None = None,
    guidance: float | None = None,
    nfe: int | None = None,
    fp16: bool = False,
    max_batch: int = 16,
    opt_batch: int | None = None,
    device: str = "cpu",
    validate: bool = True,
    min_psnr: float | None = None,
    workspace_bytes: int = 2 << 30,
    timing_cache: str | None = None,
    refittable: bool = False,
    force: bool = False,
    sizes: str | None = None,
    max_nfe: int | None = None,
    log=print,
) -> dict:
    """Build, validate and atomically publish an artifact directory; return its manifest (the JSON object).

    device: where the export traces the sampler and where the artifact is validated (for `aoti`
    also the package's target device; ONNX graphs are device-independent).  An existing `out` is
    replaced only when it is empty or an artifact, unless force=True.  guidance None: the solver file's
    (the scale it was distilled at), else 1.  sizes: `HxW,...` or `HxW:HxW`, the spatial sizes the graph
    takes besides the model's own (image pixels with a decoder; the solver runs unchanged at each).
    A loop format (onnx-loop) takes a list of solvers: one graph serves each, chosen per sample, up to max_nfe
    steps (default the largest table's NFE).  refittable: a TensorRT engine `refit` can give new weights or tables
    (ONNX graphs always can).
    """
    backend = get_backend(fmt)
    if timing_cache is not None and not backend.timing_cache:
        raise BNSError(f"--timing-cache applies to {', '.join(formats_with('timing_cache'))} builds, not {fmt}")
    if refittable and not backend.refittable:
        raise BNSError(f"--refittable applies to {', '.join(REFITTABLE_FORMATS)} builds, not {fmt}")
    check_replaceable(Path(out), force)  # before minutes of export, not after
    max_batch = integer(max_batch, "max_batch", 1, 65536)
    opt_batch = integer(opt_batch or max(1, max_batch // 2), "opt_batch", 1, 65536)
    if opt_batch > max_batch:
        raise BNSError(f"--opt-batch {opt_batch} is outside 1..{max_batch}")
    if min_psnr is not None:
        min_psnr = number(min_psnr, "min_psnr", 0, 1000)
    integer(workspace_bytes, "workspace_bytes", 1 << 24, 1 << 50)
    built = load_build_inputs(model, solver, options or ModelOptions(), guidance, nfe, sizes, backend.loop, max_nfe)
    request = export_request(built, max_batch, opt_batch, device, workspace_bytes, timing_cache, refittable)
    backend.check_available(request)  # exit 3 before anything is written
    if fp16:
        check_halvable(built.field)
    reference = reference_sampler(built)
    manifest = new_manifest(fmt, "fp16" if fp16 else "fp32", built, request)
    request = replace(request, metadata={k: manifest[k] for k in GRAPH_METADATA})
    with staging_dir(Path(out), force=force) as tmp:
        built.save_tables(tmp)
        # the fp32 reference's vectors first: --fp16 then halves the same weights in place
        conformance = write_conformance(tmp, reference, request)
        del reference
        sampler = export_sampler(built, fp16, device if backend.traces_on_device else "cpu")
        manifest.update(backend.export(sampler, request, tmp, log))
        manifest["conformance"] = conformance
        manifest = write_manifest(tmp, manifest)
        del built, sampler  # the validator loads its own reference: no second copy of the weights beside it
        gc.collect()
        if validate:
            manifest = _validate_staged(tmp, manifest, min_psnr, device, log)
    return manifest


def _validate_staged(tmp: Path, manifest: dict, min_psnr: float | None, device: str, log) -> dict:
    """Parity of the staged artifact against the eager sampler; a failed gate leaves nothing published."""
    from .parity import validate_artifact

    log(f"validating against the eager PyTorch sampler on {device} ...")
    # the user named this model and decoder on the command line, and this process just built the engine: trusted
    # parity only: the gate needs no ground truth, whose dopri5 solve can take hours for a big model on a CPU
    # (`bns-export validate` adds both samplers' PSNR against it)
    policy = OpenPolicy(trust_engine_code=True)
    report = validate_artifact(
        tmp, min_psnr=min_psnr, device=device, trust_model_spec=True, policy=policy, ground_truth=False
    )
    manifest["validation"] = report
    if not report["passed"]:
        raise BNSError(
            f"parity check failed: min PSNR {report['psnr_min']:.2f} dB < gate "
            f"{report['gate_db']:.0f} dB; no artifact written",
            EXIT_PARITY_FAILED,
        )
    return write_manifest(tmp, manifest)
