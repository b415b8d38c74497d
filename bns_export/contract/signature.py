"""The compiled graph's signature as typed records: each input and output a TensorSpec (Polygraphy's
TensorMetadata: name, dtype, one item's shape), the condition always a named record of inputs whose kind
(none, class labels, one tensor, named tensors) is decided here once.  Torch-free: the runtime, validation,
Triton and the server read it as compile wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..checks import integer, plain_identifier
from ..errors import BNSError
from ..sizes import AXES, IMAGE_AXES

#: a guidance family's graph input: (B,) float32, the scale per sample
GUIDANCE_INPUT = "guidance"
#: a loop graph's input: (B,) int64, the index of each sample's solver table
TABLE_INPUT = "table"
#: a loop graph's tables, padded to its maximum NFE M, as the initializers that hold them: t (K, M), a (K, M) and
#: b (K, M, M) float32, each table's NFE (K,) int64 (replaced by `refit --solver`)
TABLE_INITIALIZERS = {"t": "tables.t", "a": "tables.a", "b": "tables.b", "nfe": "tables.nfe"}
#: the label of the unconditional branch (the same value as bns_export.fields.NULL_LABEL)
NULL_LABEL = -1
#: the graph's outputs: the sample, and the image with a decoder in the graph
OUTPUTS = ("sample", "image")
#: the dtypes a graph's tensors have, by their manifest names
DTYPES = {"float32": np.float32, "int64": np.int64}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, dtype and one item's shape after the batch axis (an int per axis, or
    an axis name where the graph takes several sizes), and a note for users."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    note: str | None = None

    @property
    def numpy_dtype(self) -> type:
        return DTYPES[self.dtype]

    @property
    def json_shape(self) -> list:
        """The shape with its batch axis, as the manifest and sizes.concrete spell it: ["batch", sizes...]."""
        return ["batch", *self.shape]

    def to_json(self) -> dict:
        """The manifest's form: {name, dtype, shape: ["batch", sizes...][, note]}."""
        spec = {"name": self.name, "dtype": self.dtype, "shape": self.json_shape}
        return spec if self.note is None else {**spec, "note": self.note}

    @classmethod
    def from_json(cls, d, where: str) -> TensorSpec:
        """A manifest entry, checked: a plain name, a known dtype, ["batch", 0 to 8 sizes or axis names]."""
        if not isinstance(d, dict):
            raise BNSError(f"manifest {where} must be a list of {{name, dtype, shape}} objects")
        name = plain_identifier(d.get("name"), f"manifest {where}: tensor name")
        if d.get("dtype") not in DTYPES:
            raise BNSError(f"manifest {where}: {name}'s dtype must be float32 or int64, got {d.get('dtype')!r}")
        shape = d.get("shape")
        if not isinstance(shape, list) or shape[:1] != ["batch"] or len(shape) > 9:
            raise BNSError(f"manifest {where}: {name}'s shape must be ['batch', sizes...], got {shape!r}")
        dims = shape[1:]
        for i, size in enumerate(dims):
            if not (i >= len(dims) - 2 and size in (*AXES, *IMAGE_AXES)):
                integer(size, f"manifest {where} {name}'s shape", 1, 1 << 20)
        note = d.get("note")
        return cls(name, d["dtype"], tuple(dims), note if isinstance(note, str) else None)


class ConditionKind(str, Enum):
    """What the graph is conditioned on: nothing, class labels (B,) int64, one tensor `cond`, or named tensors
    (SDXL's, SD3's, Flux's: one input each)."""

    NONE = "none"
    LABELS = "labels"
    TENSOR = "tensor"
    NAMED = "named"


@dataclass(frozen=True)
class Signature:
    """The graph's inputs (noise, the condition's inputs, a family's guidance or a loop graph's table index) and
    outputs, in order."""

    noise: TensorSpec
    conditions: tuple[TensorSpec, ...] = ()
    guidance: TensorSpec | None = None
    outputs: tuple[TensorSpec, ...] = ()
    table: TensorSpec | None = None

    @property
    def kind(self) -> ConditionKind:
        names = tuple(c.name for c in self.conditions)
        if not names:
            return ConditionKind.NONE
        return {("labels",): ConditionKind.LABELS, ("cond",): ConditionKind.TENSOR}.get(names, ConditionKind.NAMED)

    @property
    def conditional(self) -> bool:
        return self.kind is not ConditionKind.NONE

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        controls = tuple(c for c in (self.guidance, self.table) if c is not None)
        return (self.noise, *self.conditions, *controls)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def condition_shapes(self) -> dict[str, tuple]:
        return {c.name: c.shape for c in self.conditions}

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def to_json(self) -> tuple[list[dict], list[dict]]:
        """The manifest's `inputs` and `outputs` lists."""
        return [s.to_json() for s in self.inputs], [o.to_json() for o in self.outputs]

    @classmethod
    def from_json(cls, inputs, outputs) -> Signature:
        """The manifest's lists, checked: noise first, guidance last if there, a sample output (and an image)."""
        if not isinstance(inputs, list) or not inputs or not isinstance(outputs, list) or not outputs:
            raise BNSError("manifest inputs and outputs must be non-empty lists of {name, dtype, shape} objects")
        ins = [TensorSpec.from_json(s, "inputs") for s in inputs]
        outs = tuple(TensorSpec.from_json(s, "outputs") for s in outputs)
        if ins[0].name != "noise":
            raise BNSError("the first input must be noise")
        table = ins.pop() if len(ins) > 1 and ins[-1].name == TABLE_INPUT else None
        guidance = ins.pop() if len(ins) > 1 and ins[-1].name == GUIDANCE_INPUT else None
        names = [s.name for s in ins]
        if len(set(names)) != len(names) or GUIDANCE_INPUT in names or TABLE_INPUT in names:
            raise BNSError(f"manifest inputs repeat a name or misplace guidance or table: {names}")
        if table is not None and (table.dtype, table.shape) != ("int64", ()):
            raise BNSError("manifest inputs: table must be int64 of shape (B,)")
        for spec in ins[1:]:  # class labels are (B,) int64, every other condition a float32 tensor
            want = ("int64", ()) if spec.name == "labels" else ("float32", spec.shape)
            if (spec.dtype, spec.shape) != want:
                raise BNSError(
                    f"manifest inputs: {spec.name} must be {want[0]} of shape (B, {', '.join(map(str, want[1]))})"
                )
        if [o.name for o in outs] not in (["sample"], ["sample", "image"]):
            raise BNSError(
                f"outputs must be [sample] or [sample, image] (with a decoder), got {[o.name for o in outs]}"
            )
        return cls(ins[0], tuple(ins[1:]), guidance, outs, table)
