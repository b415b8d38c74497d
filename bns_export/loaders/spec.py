"""The model spec (`-m SPEC` and the options describing a user's network), parsed once into a record.

The manifest stores this record and the validator rebuilds the eager reference from it, so the
spec is read the same way on both sides.  `ModelSpec.runs_code` says whether loading it would
import and call code the spec names (a `module:factory` model or decoder): an artifact is data,
so validating one never does that unless the user asks on the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..checks import integer, sample_shape
from ..errors import BNSError

ANALYTIC_PREFIX = "analytic:"
DIFFUSERS_PREFIX = "diffusers:"


@dataclass
class ModelOptions:
    """How to read a user's network (shipped and analytic models know, and refuse them).

    None means "not given": factories then use velocity / fm-ot / t, diffusers folders their configs.
    """

    prediction: str | None = None
    schedule: str | None = None
    time_input: str | None = None
    train_steps: int = 1000
    shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    #: safetensors file with "cond" (N, ...) conditions (e.g. prompt embeddings) and optionally "null" (...),
    #: the unconditional branch's condition (default zeros): the model is then tensor-conditioned
    cond_set: str | None = None
    #: a decoder appended after the sampler (latent models): vae, a diffusers autoencoder folder or
    #: module:factory (see bns_export.loaders.decoders); read by compile and sample only
    decoder: str | None = None
    #: LoRA files fused into a diffusers network's weights, each FILE or FILE:SCALE (loaders.diffusers.merge_loras)
    loras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.shape is not None:  # from the CLI, the API or a manifest: checked before any network sees it
            self.shape = sample_shape(self.shape, "shape")
        self.loras = tuple(self.loras or ())

    def given(self) -> list[str]:
        """The network options set to something other than their defaults (the decoder aside)."""
        default = ModelOptions()
        return [
            f.name for f in fields(self) if f.name != "decoder" and getattr(self, f.name) != getattr(default, f.name)
        ]


#: the types of each option as stored in JSON (a manifest's model_spec)
_OPTION_TYPES = {
    "prediction": str,
    "schedule": str,
    "time_input": str,
    "train_steps": int,
    "shape": list,
    "num_classes": int,
    "cond_set": str,
    "decoder": str,
    "loras": list,
}


def spec_kind(model: str) -> str:
    """shipped, analytic, diffusers or factory: which loader a spec string goes to."""
    if not isinstance(model, str) or not model:
        raise BNSError("a model spec must be a shipped model name, analytic:NAME or package.module:factory")
    if model.startswith(ANALYTIC_PREFIX):
        return "analytic"
    if model.startswith(DIFFUSERS_PREFIX):
        return "diffusers"
    if ":" in model:
        return "factory"
    return "shipped"


def decoder_runs_code(decoder: str | None) -> bool:
    """A decoder spec that imports code: module:factory (vae and folders are data read by diffusers)."""
    from pathlib import Path

    return bool(decoder) and decoder != "vae" and ":" in decoder and not Path(decoder).expanduser().is_dir()


@dataclass
class ModelSpec:
    """`-m SPEC` and its options: what the manifest records and the validator rebuilds from."""

    model: str
    options: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        self.kind = spec_kind(self.model)

    @property
    def runs_code(self) -> bool:
        """Loading it imports and calls code it names (a factory model or decoder)."""
        return self.kind == "factory" or decoder_runs_code(self.options.decoder)

    def to_json(self) -> dict:
        return {"model": self.model, "options": asdict(self.options)}

    @classmethod
    def from_json(cls, d) -> ModelSpec:
        """The record of a manifest's model_spec, every field's type checked (one line, exit 2)."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), str) or not isinstance(d.get("options", {}), dict):
            raise BNSError("manifest model_spec must be {'model': str, 'options': {...}}")
        raw = d.get("options", {})
        unknown = sorted(set(raw) - set(_OPTION_TYPES))
        if unknown:
            raise BNSError(f"manifest model_spec has unknown option(s) {', '.join(unknown)}")
        opts = {}
        for key, value in raw.items():
            if value is None:
                continue
            want = _OPTION_TYPES[key]
            if want is int:
                value = integer(value, f"model_spec option {key}", 1, 1 << 40)
            elif not isinstance(value, want):
                raise BNSError(f"manifest model_spec option {key} must be a {want.__name__}, got {value!r}")
            if key == "shape":
                value = tuple(integer(s, "model_spec shape", 1, 1 << 20) for s in value)
            if key == "loras":
                if not all(isinstance(v, str) for v in value):
                    raise BNSError("manifest model_spec option loras must be a list of FILE[:SCALE] strings")
                value = tuple(value)
            opts[key] = value
        return cls(d["model"], ModelOptions(**opts))
