"""refit_artifact: an ONNX artifact's graph with another network's weights (a fine-tune of the same architecture),
without exporting the graph again; a TensorRT engine built with --refittable is then refitted from that graph,
without a build.

The exported graph holds every weight as an initializer: under its parameter's name, or folded by the
export (a projection weight stored transposed, a norm's weight reshaped to (C, 1, 1), under generated
names, and equal tensors stored once).  Each initializer is traced back to the base network's tensor it
holds, by name or by its bytes as they are or transposed, in any shape of the same size (the base: the
model the manifest names, or --base); the new network's tensor goes in its
place through the same transform.  A weight that changed but that no initializer holds in a form this
follows, or two weights the graph stores as one that now differ, is one line (compile again).  The result
is validated against the eager sampler of the new weights like any compile, conformance vectors included,
and published atomically.  The solver table is kept: whether it still fits the fine-tune is what `eval`
measures (docs/deployment.md).
"""

from __future__ import annotations

import datetime
import gc
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..backends import REFITTABLE_FORMATS, get_backend
from ..backends.base import GRAPH_METADATA, graph_metadata_value
from ..backends.onnx import GRAPH_FILE
from ..backends.onnx_walk import all_initializers
from ..contract import TABLE_INITIALIZERS, Manifest
from ..errors import BNSError
from ..loaders import ModelSpec, load_model
from ..loaders.decoders import load_decoder
from ..runtime.artifact import OpenPolicy, check_replaceable, staging_dir, write_manifest
from ..solvers import parse_spec, resolve_solver, solver_guidance
from ..solvers.sampler import padded_tables
from ..solvers.table import NSSolver, SolverFamily, load_solver
from .build import (
    BuildInputs,
    _validate_staged,
    export_request,
    library_versions,
    reference_sampler,
    write_conformance,
)
from .parity import reference_spec

#: how a graph initializer was made from a parameter
IDENTITY, TRANSPOSE = "as is", "transposed"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _built(spec: ModelSpec, manifest: Manifest, table, tables: tuple = ()) -> BuildInputs:
    """The build inputs of `spec` at the artifact's traced guidance with its table (a loop graph's: its tables; no
    identity check: a fine-tune is another network by design)."""
    family = isinstance(table, SolverFamily)
    guidance = manifest.traced_guidance
    field = load_model(spec, guidance=guidance)
    decoder = load_decoder(spec.options.decoder, spec, field.sample_shape) if spec.options.decoder else None
    steps = manifest.nfe if tables else None
    return BuildInputs(spec, field, table, decoder, None if family else guidance, None, tables, steps)


@dataclass(frozen=True)
class BaseIndex:
    """What refit keeps of the base network's weights instead of the weights: their shapes, each one's digest as
    it is, and, per graph dtype, where an initializer's bytes can come from (each weight as is, and 2-D ones
    transposed, by digest), so that the base is freed before the graph's data is read."""

    shapes: dict[str, tuple[int, ...]]
    digests: dict[str, str]
    sources: dict[np.dtype, dict[str, list[tuple[str, str]]]]

    @classmethod
    def of(cls, base: dict[str, torch.Tensor], dtypes: set[np.dtype]) -> BaseIndex:
        sources: dict[np.dtype, dict[str, list[tuple[str, str]]]] = {d: {} for d in dtypes}
        for name, t in base.items():
            for dtype, index in sources.items():
                a = t.detach().cpu().numpy().astype(dtype)
                index.setdefault(_digest(a), []).append((name, IDENTITY))
                if a.ndim == 2:
                    index.setdefault(_digest(a.T), []).append((name, TRANSPOSE))
        digests = {name: _digest(t.detach().cpu().numpy()) for name, t in base.items()}
        return cls({name: tuple(t.shape) for name, t in base.items()}, digests, sources)


def float_dtypes(graph) -> set[np.dtype]:
    """The numpy dtypes of a graph's floating-point initializers (read without their data)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    dtypes = {np.dtype(tensor_dtype_to_np_dtype(init.data_type)) for init in all_initializers(graph)}
    return {d for d in dtypes if d.kind == "f"}


def refit_weights(graph, base: BaseIndex, new: dict[str, torch.Tensor]) -> int:
    """Write the new network's weights into each initializer that holds a base weight (same transform, the graph's
    dtype), one at a time; return how many.  One line for an architecture that differs, a changed weight the graph
    does not hold in a followable form, or two weights stored as one that now differ."""
    from onnx import numpy_helper

    if sorted(base.shapes) != sorted(new):
        extra, missing = sorted(set(new) - set(base.shapes)), sorted(set(base.shapes) - set(new))
        raise BNSError(
            "the new model's architecture differs from the artifact's: "
            + (f"new tensors {', '.join(extra[:3])}" if extra else f"missing tensors {', '.join(missing[:3])}")
        )
    for name, shape in base.shapes.items():
        if shape != tuple(new[name].shape):
            raise BNSError(
                f"tensor {name} has shape {tuple(new[name].shape)} in the new model, {shape} in the artifact's: "
                "refit takes a fine-tune of the same architecture"
            )
    held, count = set(), 0
    for init in all_initializers(graph):  # a loop graph keeps the network's weights in its body
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind != "f":
            continue
        found = [(init.name, IDENTITY)] if init.name in base.shapes else base.sources[arr.dtype].get(_digest(arr), [])
        values = []
        for name, how in found:
            v = new[name].detach().cpu().numpy().astype(arr.dtype)
            v = v.T if how == TRANSPOSE else v
            if v.size != arr.size:
                continue  # equal bytes, another size: not this weight
            values.append(np.ascontiguousarray(v).reshape(arr.shape))  # a norm's (C,) folded to (C, 1, 1), ...
            held.add(name)
        if not values:
            continue  # a constant of the sampler (schedule, table), not a weight
        if any(not np.array_equal(v, values[0]) for v in values[1:]):
            raise BNSError(
                f"the graph stores {', '.join(n for n, _ in found[:3])} as one tensor (equal in the base) but the new "
                "model's differ: compile the new model instead"
            )
        del arr
        init.CopyFrom(numpy_helper.from_array(values[0], init.name))
        count += 1
    lost = [n for n in base.shapes if n not in held and _digest(new[n].detach().cpu().numpy()) != base.digests[n]]
    if lost:
        raise BNSError(
            f"weight {lost[0]} changed but the graph holds it in a form refit cannot follow (folded with other "
            f"constants){' and ' + str(len(lost) - 1) + ' more' if len(lost) > 1 else ''}: compile the new model"
        )
    return count


def refit_artifact(
    artifact: str | Path,
    model: str | None,
    out: str | Path,
    *,
    loras: tuple[str, ...] = (),
    base: str | None = None,
    solvers: tuple = (),
    nfe: int | None = None,
    min_psnr: float | None = None,
    device: str = "cpu",
    force: bool = False,
    policy: OpenPolicy | None = None,
    log=print,
) -> dict:
    """Write `out`: the artifact's graph (and a refittable engine) with `model`'s weights and, for a loop graph, the
    tables `solvers` (solver files or classic solvers at `nfe`) in place of its own (see the module docstring); return
    its manifest.  base: the model the artifact was built from (default: its manifest's model spec)."""
    import onnx

    if model is None and (loras or not solvers):
        raise BNSError("refit needs new weights (-m, with any --lora), new tables (--solver), or both")
    artifact = Path(artifact)
    manifest = (policy or OpenPolicy.resolve()).open(artifact)
    backend = get_backend(manifest.format)
    if not backend.refittable:
        raise BNSError(
            f"refit takes {', '.join(REFITTABLE_FORMATS)} artifacts; this one is {manifest.format} (compile the new "
            "model)"
        )
    if backend.refit_flag and not manifest.engine_refittable:
        raise BNSError(
            f"this {manifest.format} engine was built without --refittable, so its weights are fixed: compile the new "
            "model, or compile with --refittable to refit later"
        )
    backend.check_available(None)  # exit 3 before any model is loaded
    if solvers and not manifest.tables:
        raise BNSError("new tables go into a loop graph (compile --format onnx-loop); this artifact bakes its table")
    check_replaceable(Path(out), force)
    recorded = reference_spec(manifest, base, trust_model_spec=base is not None)
    table = load_solver(artifact / manifest.solver_file)
    tables = tuple(load_solver(artifact / e.file) for e in manifest.tables)
    log(f"loading the base {recorded.model}" + ("" if model is None else f" and the new {model}") + " ...")
    built = _built(recorded, manifest, table, tables)
    if built.field.fingerprint() != manifest.model_fingerprint:
        raise BNSError(
            f"the base model {recorded.model} is not the one this artifact was built from (fingerprint "
            f"{built.field.fingerprint()}, the artifact's {manifest.model_fingerprint}): pass --base"
        )
    if solvers:
        tables = new_tables(solvers, built.field, manifest, nfe)
        built = replace(built, solver=tables[0], tables=tables)
    graph_file = artifact / GRAPH_FILE
    outline = onnx.load(str(graph_file), load_external_data=False)  # where its weights live, before loading them
    locations = {e.value for init in all_initializers(outline.graph) for e in init.external_data if e.key == "location"}
    if model is not None:  # the base's weights as digests only: never the base, the new model and the graph at once
        base_index = BaseIndex.of(reference_sampler(built).state_dict(), float_dtypes(outline.graph))
        built = _built(ModelSpec(model, replace(recorded.options, loras=tuple(loras))), manifest, built.solver, tables)
        gc.collect()
    del outline
    new_sampler = reference_sampler(built)
    graph = onnx.load(str(graph_file), load_external_data=True)
    if model is not None:
        log("refitting the weights ...")
        log(f"refitted {refit_weights(graph.graph, base_index, new_sampler.state_dict())} initializers")
    if solvers:
        from onnx import numpy_helper

        log(f"replacing the tables: {', '.join(f'{t.name} ({t.nfe} NFE)' for t in tables)} ...")
        values = table_values(tables, manifest.nfe)
        for init in all_initializers(graph.graph):
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    request = export_request(built, manifest.max_batch, manifest.opt_batch or 1, "cpu", 2 << 30, None)
    fields = {
        "model_fingerprint": built.field.fingerprint(),
        "model": built.field.describe(),
        "model_spec": built.spec.to_json(),
        "tool_version": __version__,
    }
    if solvers:
        fields.update(
            tables=[e.to_json() for e in built.table_entries],
            solver_fingerprint=built.solver.fingerprint(),
            solver_name=built.solver.name,
            inputs=request.signature.to_json()[0],  # the table input's note names the tables
        )
    for entry in graph.metadata_props:
        if entry.key in fields and entry.key in GRAPH_METADATA:
            entry.value = graph_metadata_value(fields[entry.key])
    refitted = {**manifest.to_json(), **fields}
    refitted["versions"] = library_versions()
    refitted["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if model is not None:
        refitted["refit_from"] = manifest.model_fingerprint
    if built.decoder is not None:
        refitted["decoder"] = {**built.decoder.describe(), "fingerprint": built.decoder.fingerprint()}
    with staging_dir(Path(out), force=force) as tmp:
        built.save_tables(tmp)
        onnx.save(graph, str(tmp / GRAPH_FILE), save_as_external_data=bool(locations),
                  location=next(iter(locations)) if locations else None)  # fmt: skip
        del graph
        backend.refit(artifact, tmp, manifest, log)
        refitted["conformance"] = write_conformance(tmp, new_sampler, request)
        del new_sampler, built
        for key in ("validation", "files", "signature"):
            refitted.pop(key, None)
        refitted = write_manifest(tmp, refitted)
        refitted = _validate_staged(tmp, refitted, min_psnr, device, log)
    return refitted


def new_tables(solvers: tuple, field, manifest: Manifest, nfe: int | None) -> tuple[NSSolver, ...]:
    """The tables a loop graph is given instead of its own: checked against the model, within its maximum NFE, at
    the one guidance scale it bakes."""
    parsed = [parse_spec(s) for s in solvers]
    for p in parsed:
        w = solver_guidance(p)
        if w is not None and w != manifest.guidance:
            raise BNSError(f"{p.source} was distilled at guidance {w:g}; this graph bakes {manifest.guidance:g}")
    tables = tuple(resolve_solver(p, field, None if p.is_file else nfe) for p in parsed)
    for t in tables:
        if t.nfe > manifest.nfe:
            raise BNSError(
                f"table {t.name} has {t.nfe} NFE, above this graph's maximum {manifest.nfe} (compile with --max-nfe)"
            )
    return tables


def table_values(tables: tuple[NSSolver, ...], steps: int) -> dict[str, np.ndarray]:
    """A loop graph's table initializers for `tables` padded to its `steps` (contract.TABLE_INITIALIZERS)."""
    arrays = padded_tables(list(tables), steps)
    dtypes = {"t": np.float32, "a": np.float32, "b": np.float32, "nfe": np.int64}
    return {name: arrays[i].astype(dtypes[role]) for i, (role, name) in enumerate(TABLE_INITIALIZERS.items())}
