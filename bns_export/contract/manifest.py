"""manifest.json as one frozen record: what the graph is (format, precision, signature, batch and sizes), what
it was built from (model, solver, guidance and their fingerprints) and how it was checked.  `Manifest.from_json`
reads every manifest this tool has written (older ones too); `record` keeps the JSON as read, so `to_json`
gives back what was read, fields this version does not model included."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checks import guidance_scale, integer
from ..errors import BNSError
from ..sizes import SizeSet
from .signature import ConditionKind, Signature


def traced_guidance(guidance_range: tuple[float, float] | None, guidance: float | None) -> float:
    """The scale the sampler is traced (and its eager reference rebuilt) at: a guidance family's lowest knot (its
    graph takes the scale per sample, so the field's own is never used), else the baked scale (1: none)."""
    if guidance_range is not None:
        return float(guidance_range[0])
    return 1.0 if guidance is None else float(guidance)


@dataclass(frozen=True)
class TableEntry:
    """One solver table a loop graph serves: its index is its place in the manifest's list."""

    file: str
    name: str
    nfe: int
    fingerprint: str

    def to_json(self) -> dict:
        return {"file": self.file, "name": self.name, "nfe": self.nfe, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, d) -> TableEntry:
        if not isinstance(d, dict):
            raise BNSError("manifest tables must be a list of {file, name, nfe, fingerprint} objects")
        return cls(str(d["file"]), str(d["name"]), integer(d["nfe"], "table nfe", 1, 1024), str(d["fingerprint"]))


@dataclass(frozen=True)
class Manifest:
    """The fields the runners, validation, Triton, the server and refit read, typed (see the module docstring)."""

    format: str
    precision: str
    nfe: int
    max_batch: int
    sample_shape: tuple[int, ...]
    signature: Signature
    model_file: str
    solver_file: str
    solver_fingerprint: str
    model_fingerprint: str
    files: dict[str, str]
    opt_batch: int | None = None
    guidance: float | None = None
    guidance_range: tuple[float, float] | None = None
    sizes: SizeSet | None = None
    num_classes: int | None = None
    cond_shape: tuple[int, ...] | None = None
    #: the AOTInductor package's target device (None for device-independent formats)
    device: str | None = None
    #: what validation rebuilds the eager reference from (loaders.ModelSpec.to_json())
    model_spec: dict | None = None
    #: the decoder in the graph (its description and fingerprint), None without one
    decoder: dict | None = None
    #: the stored conformance vectors ({file, batch, inputs, ...}), None for artifacts without them
    conformance: dict | None = None
    #: a loop graph's solver tables, in the order its `table` input indexes them (empty: one table, baked)
    tables: tuple[TableEntry, ...] = ()
    #: a TensorRT engine built with --refittable (BuilderFlag.REFIT): `refit` can replace its weights and tables
    engine_refittable: bool = False
    record: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict) -> Manifest:
        """The record of a manifest's JSON object (structure checked here; runtime.artifact.check_manifest checks
        ranges and files first when the manifest is read from disk)."""
        if not isinstance(d, dict):
            raise BNSError("a manifest is a JSON object")
        try:
            rng = d.get("guidance_range")
            return cls(
                format=str(d["format"]),
                precision=str(d["precision"]),
                nfe=int(d["nfe"]),
                max_batch=int(d["max_batch"]),
                sample_shape=tuple(int(s) for s in d["sample_shape"]),
                signature=Signature.from_json(d["inputs"], d["outputs"]),
                model_file=str(d["model_file"]),
                solver_file=str(d["solver_file"]),
                solver_fingerprint=str(d["solver_fingerprint"]),
                model_fingerprint=str(d["model_fingerprint"]),
                files=dict(d.get("files") or {}),
                opt_batch=None if d.get("opt_batch") is None else integer(d["opt_batch"], "opt_batch", 1),
                guidance=None if d.get("guidance") is None else guidance_scale(d["guidance"], "guidance"),
                guidance_range=None if rng is None else (float(rng[0]), float(rng[1])),
                sizes=None if d.get("sizes") is None else SizeSet.from_json(d["sizes"]),
                num_classes=None if d.get("num_classes") is None else int(d["num_classes"]),
                cond_shape=None if d.get("cond_shape") is None else tuple(int(s) for s in d["cond_shape"]),
                device=None if d.get("device") is None else str(d["device"]),
                model_spec=d.get("model_spec"),
                decoder=d.get("decoder") or None,
                conformance=d.get("conformance") or None,
                tables=tuple(TableEntry.from_json(e) for e in d.get("tables") or ()),
                engine_refittable=d.get("engine_refittable") is True,
                record=dict(d),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            if isinstance(e, BNSError):
                raise
            raise BNSError(f"manifest field {e} is missing or has the wrong type") from None

    def __post_init__(self) -> None:
        """Class labels as the graph's condition exactly when the manifest counts the classes."""
        labels = self.signature.kind is ConditionKind.LABELS
        if labels != (self.num_classes is not None):
            raise BNSError("a manifest names num_classes exactly when its graph takes labels")
        if bool(self.tables) != (self.signature.table is not None):
            raise BNSError("a manifest lists tables exactly when its graph takes a table index")
        if self.tables and max(e.nfe for e in self.tables) > self.nfe:
            raise BNSError(f"a table's NFE exceeds the graph's maximum {self.nfe}")

    @classmethod
    def of(cls, manifest: Manifest | dict) -> Manifest:
        """A Manifest as it is, a manifest's JSON object as its record."""
        return manifest if isinstance(manifest, Manifest) else cls.from_json(manifest)

    def to_json(self) -> dict:
        """The JSON object this record was read from (a copy)."""
        return dict(self.record)

    def get(self, key: str, default=None):
        """A field this record does not type (validation, conformance, model_spec, versions, ...), as read."""
        return self.record.get(key, default)

    @property
    def family(self) -> bool:
        """A guidance family's artifact: its graph takes the scale per sample (`guidance` input)."""
        return self.guidance_range is not None

    @property
    def traced_guidance(self) -> float:
        """The scale the graph was traced at and its reference is rebuilt at (`traced_guidance`)."""
        return traced_guidance(self.guidance_range, self.guidance)

    @property
    def conditional(self) -> bool:
        return self.signature.conditional
