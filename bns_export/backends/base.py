"""The runner interface every backend implements, the export request every exporter takes, and the
input checks shared by all runners (Polygraphy's BaseRunner shape: load once, then infer many times).

Runner outputs follow their inputs: numpy in, numpy out; torch in, torch out on the input's device.
`runner(noise, cond)` returns the artifact's product (the image when a decoder is in the graph, else
the sample); `runner.run(noise, cond)` returns every output by name (Polygraphy's `infer` dict).
Imports nothing heavier than numpy, so the ONNX runtime path stays torch-free.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BNSError
from ..sizes import SizeSet, concrete, declared_sizes

NULL_LABEL = -1  # the unconditional branch (same value as bns_export.fields.NULL_LABEL)
GUIDANCE_INPUT = "guidance"  # a guidance family's graph input: (B,) float32, the scale per sample


def condition_input(conditional: bool, cond_shape) -> tuple[str | None, type | None]:
    """The graph's condition input and its numpy dtype: ("labels", int64) for class labels (B,),
    ("cond", float32) for a tensor condition (B, *cond_shape), (None, None) when unconditional."""
    if not conditional:
        return None, None
    return ("cond", np.float32) if cond_shape is not None else ("labels", np.int64)


@dataclass(frozen=True)
class ExportRequest:
    """What an exporter needs besides the module: shapes, batch range, device and backend knobs."""

    sample_shape: tuple[int, ...]
    conditional: bool
    max_batch: int
    opt_batch: int
    device: str = "cpu"
    metadata: dict = field(default_factory=dict)
    workspace_bytes: int = 2 << 30
    timing_cache: str | None = None
    cond_shape: tuple[int, ...] | None = None  # a tensor condition's shape (else labels, when conditional)
    #: the graph's outputs: ("sample",), or ("sample", "image") with a decoder
    output_names: tuple[str, ...] = ("sample",)
    #: several named conditions: (name, one sample's shape) per graph input, in order; else ()
    condition_parts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: a guidance family's range: the graph then takes guidance (B,) float32 last; else None
    guidance_range: tuple[float, float] | None = None
    #: the spatial sizes the graph takes (its noise's last two axes are then dynamic); None: sample_shape only
    sizes: SizeSet | None = None

    @property
    def condition_name(self) -> str | None:
        """The graph's condition input: "labels", "cond" or None (see `condition_input`)."""
        return condition_input(self.conditional, self.cond_shape)[0]

    @property
    def input_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every graph input after noise, in order, with one sample's shape: the condition input(s), then
        guidance (one number per sample) with a family."""
        if self.condition_parts:
            parts = list(self.condition_parts)
        else:
            parts = [(self.condition_name, tuple(self.cond_shape or ()))] if self.conditional else []
        return parts + ([(GUIDANCE_INPUT, ())] if self.guidance_range is not None else [])

    @property
    def input_names(self) -> list[str]:
        """Every graph input in order: noise, then the condition input(s), then guidance with a family."""
        return ["noise", *(name for name, _ in self.input_shapes)]


#: manifest keys also stored in the graph's own metadata (ONNX metadata_props), compared on load
GRAPH_METADATA = (
    "solver_fingerprint",
    "model_fingerprint",
    "nfe",
    "guidance",
    "guidance_range",
    "sizes",
    "precision",
    "inputs",
    "outputs",
    "tool_version",
)


def graph_metadata_value(value) -> str:
    """How a manifest value is written into the graph's string metadata."""
    return value if isinstance(value, str) else json.dumps(value)


def check_graph_metadata(meta: dict, manifest: dict, model_file: str) -> None:
    """The graph's own metadata must hold every key the exporter wrote that its manifest names, and agree with it
    (a swapped graph whose hash was updated is caught, and so is one whose metadata was stripped)."""
    missing = [key for key in GRAPH_METADATA if key in manifest and key not in meta]
    if missing:
        raise BNSError(
            f"{model_file}'s own metadata lacks {', '.join(missing)}: the graph cannot be matched to its manifest "
            "(stripped, or not written by bns-export)"
        )
    for key in GRAPH_METADATA:
        if key in meta and key in manifest and meta[key] != graph_metadata_value(manifest[key]):
            raise BNSError(
                f"{model_file}'s own metadata says {key} {meta[key][:80]}, its manifest "
                f"{graph_metadata_value(manifest[key])[:80]}: the graph does not belong to this manifest"
            )


def profile_shapes(inputs: list[dict], opt_batch: int, max_batch: int, sizes: SizeSet | None) -> list[dict]:
    """A TensorRT optimisation profile's min, opt and max shape of every graph input (manifest specs): batch 1
    at the smallest declared size, the opt batch at the size the solver was distilled at, the max batch at the
    largest (TensorRT builds for that box; the runner admits only the declared sizes inside it)."""
    lo, hi = sizes.bounds if sizes is not None else (None, None)
    base = sizes.base if sizes is not None else None
    points = ((1, lo), (opt_batch, base), (max_batch, hi))
    return [{s["name"]: concrete(s["shape"], b, size) for s in inputs} for b, size in points]


def profile_strings(manifest: dict) -> list[str]:
    """profile_shapes as ONNX Runtime's TensorRT options spell them (`noise:1x4x64x64,cond:1x77x768`)."""
    sizes = declared_sizes(manifest)
    profile = profile_shapes(manifest["inputs"], int(manifest.get("opt_batch") or 1), int(manifest["max_batch"]), sizes)
    return [",".join(f"{name}:" + "x".join(map(str, dims)) for name, dims in p.items()) for p in profile]


def is_torch(x) -> bool:
    """True for a torch.Tensor, decided without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def to_numpy(x, dtype) -> np.ndarray:
    """A contiguous numpy array of `dtype` from numpy or torch input (any torch dtype, bf16 included)."""
    if is_torch(x):
        import torch

        x = x.detach().to(device="cpu", dtype=torch.float32 if dtype == np.float32 else torch.int64).numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _array(x, what: str):
    """A torch tensor as it is, anything else as a numpy array (lists, tuples, scalars)."""
    if is_torch(x):
        if x.device.type == "meta":
            raise BNSError(f"{what} is a meta tensor (it holds no data)")
        if str(x.layout) != "torch.strided":
            raise BNSError(f"{what} is a {str(x.layout)[6:]} tensor; pass a dense one (.to_dense())")
        return x
    if x is None or isinstance(x, (str, bytes, dict)):
        raise BNSError(f"{what} must be an array of numbers, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise BNSError(f"{what} is not an array of numbers ({str(e).splitlines()[0]})") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise BNSError(f"{what} must be an array of numbers, got dtype {arr.dtype}")
    return arr


def _dims(shape) -> str:
    return ", ".join(map(str, shape))


def _kind(x) -> str:
    """numpy's dtype kind (f, i, u, b, c) of a numpy array or torch tensor."""
    if is_torch(x):
        if x.dtype.is_complex:
            return "c"
        if x.dtype.is_floating_point:
            return "f"
        return "b" if str(x.dtype) == "torch.bool" else "i"
    return x.dtype.kind


def _all_finite(x) -> bool:
    """Finite once in the graph's float32: NaN, inf and float64 values beyond float32's range are not."""
    if is_torch(x):
        import torch

        return bool(torch.isfinite(x.detach().float()).all())
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(x, dtype=np.float32)).all())


def follow(out, like):
    """`out` (numpy or torch) as the kind of `like`: torch on like's device, else a numpy array."""
    if is_torch(like):
        import torch

        return (out if is_torch(out) else torch.from_numpy(np.ascontiguousarray(out))).to(like.device)
    return np.asarray(out.detach().cpu().numpy()) if is_torch(out) else np.asarray(out)


class Runner(ABC):
    """Callable artifact: runner(noise (B, *shape) float32 [, labels (B,) int64 | cond (B, ...) float32 |
    {name: (B, ...) float32} for named conditions]) -> its product (B, ...): images with a decoder in the
    graph, else samples."""

    #: where the backend computes ("cpu", "cuda", "cuda:1")
    device: str = "cpu"

    def __init__(self, folder: str | Path, manifest: dict) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.sample_shape = tuple(manifest["sample_shape"])
        self.max_batch = int(manifest["max_batch"])
        self.num_classes = manifest.get("num_classes")
        self.cond_shape = tuple(manifest["cond_shape"]) if manifest.get("cond_shape") is not None else None
        self.conditional = self.num_classes is not None or self.cond_shape is not None
        #: the graph's condition input ("labels" or "cond") and its numpy dtype
        self.condition_name, self.condition_dtype = condition_input(self.conditional, self.cond_shape)
        #: the graph's condition inputs, in order, and one sample's shape each
        inputs = [i for i in manifest["inputs"] if i["name"] not in ("noise", GUIDANCE_INPUT)]
        self.condition_names = [i["name"] for i in inputs]
        self.condition_shapes = {i["name"]: tuple(i["shape"][1:]) for i in inputs}
        #: a guidance family's range: guidance (B,) is then an input (None: the artifact bakes one scale)
        rng = manifest.get("guidance_range")
        self.guidance_range = None if rng is None else (float(rng[0]), float(rng[1]))
        #: every graph input in order: noise, the condition(s), then guidance with a family
        self.input_names = ["noise", *self.condition_names, *([GUIDANCE_INPUT] if self.guidance_range else [])]
        #: named conditions (SDXL, SD3, Flux, ...): the condition is a {name: array} record
        self.named_conditions = self.conditional and self.condition_names not in (["labels"], ["cond"])
        self.nfe = int(manifest["nfe"])
        #: the graph's outputs in order ("sample", then "image" with a decoder) and one item's shape each
        self.output_names = [o["name"] for o in manifest["outputs"]]
        self.output_shapes = {o["name"]: list(o["shape"]) for o in manifest["outputs"]}
        #: the spatial sizes the graph takes (None: sample_shape only)
        self.sizes = declared_sizes(manifest)
        self._lock = threading.Lock()  # for backends whose contexts are not thread-safe

    def check_inputs(self, noise, condition) -> tuple:
        """Noise: array-like of real floats, finite, shape (B, *sample_shape), 1 <= B <= max_batch; labels:
        integers in 0..K-1 or -1, shape (B,), exactly when the artifact is conditional.  Returns the
        inputs (lists become numpy arrays); anything else is one clear error."""
        noise = _array(noise, "noise")
        shape = tuple(noise.shape)
        self._check_noise_shape(shape)
        if not 1 <= shape[0] <= self.max_batch:
            raise BNSError(f"batch {shape[0]} is outside 1..{self.max_batch}, the range this artifact was built for")
        if _kind(noise) != "f":
            raise BNSError(f"noise must hold real floating-point numbers, got dtype {noise.dtype}")
        if not _all_finite(noise):
            raise BNSError("noise holds NaN or inf (or values beyond float32's range)")
        if not self.conditional:
            if condition is not None:
                raise BNSError("this artifact is unconditional: do not pass labels")
            return noise, None
        if condition is None:
            if self.cond_shape is not None:
                raise BNSError(
                    f"this artifact is conditioned on a tensor: cond (B, {_dims(self.cond_shape)}) is required"
                )
            raise BNSError("this artifact is class-conditional: labels (B,) int64 are required")
        if self.named_conditions:
            return noise, self._check_named(condition, shape[0])
        if self.cond_shape is not None:
            return noise, self._check_cond(condition, shape[0])
        condition = _array(condition, "labels")
        if tuple(condition.shape) != (shape[0],):
            raise BNSError(f"labels have shape {tuple(condition.shape)}, expected ({shape[0]},)")
        if _kind(condition) not in ("i", "u"):
            raise BNSError(f"labels must be integers (class indices), got dtype {condition.dtype}")
        # its own dtype: no wrap to int64 yet
        lab = condition.detach().cpu().numpy() if is_torch(condition) else condition
        if lab.size and (int(lab.min()) < NULL_LABEL or int(lab.max()) >= self.num_classes):
            raise BNSError(f"labels must be in 0..{self.num_classes - 1} (or {NULL_LABEL} for unconditional)")
        return noise, condition

    def _check_noise_shape(self, shape: tuple) -> None:
        """(B, *sample_shape), or with declared sizes (B, C, H, W) at any of them."""
        rank = len(self.sample_shape) + 1
        if self.sizes is not None and len(shape) == rank and shape[1:-2] == self.sample_shape[:-2]:
            if shape[-2:] not in self.sizes:  # the right channels: only the spatial size can be wrong
                raise BNSError(f"noise has size {shape[-2]}x{shape[-1]}; this artifact takes {self.sizes.describe()}")
        elif len(shape) != rank or shape[1:] != self.sample_shape:
            extra = f" or another size in {self.sizes.describe()}" if self.sizes else ""
            raise BNSError(f"noise has shape {shape}, expected (B, {_dims(self.sample_shape)}){extra}")

    def output_shape(self, name: str, noise_shape: tuple) -> tuple[int, ...]:
        """The shape of output `name` for a checked noise of `noise_shape` (its batch and spatial size)."""
        size = tuple(noise_shape[-2:]) if self.sizes is not None else None
        return concrete(self.output_shapes[name], int(noise_shape[0]), size, self.sizes.scale if self.sizes else 1)

    def _check_cond(self, cond, batch: int, name: str = "cond", shape: tuple | None = None):
        """A tensor condition: real floats, finite, shape (B, *shape) (default: the manifest's cond_shape)."""
        shape = self.cond_shape if shape is None else shape
        cond = _array(cond, name)
        if tuple(cond.shape) != (batch, *shape):
            raise BNSError(f"{name} has shape {tuple(cond.shape)}, expected ({batch}, {_dims(shape)})")
        if _kind(cond) != "f":
            raise BNSError(f"{name} must hold real floating-point numbers, got dtype {cond.dtype}")
        if not _all_finite(cond):
            raise BNSError(f"{name} holds NaN or inf (or values beyond float32's range)")
        return cond

    def check_guidance(self, guidance, batch: int):
        """A family's guidance: one number (every sample) or (B,) real floats within the distilled range; a
        baked artifact takes none.  Returns a float32 (B,) numpy array or torch tensor, or None."""
        if self.guidance_range is None:
            if guidance is not None:
                raise BNSError(
                    f"this artifact bakes guidance {self.manifest.get('guidance')}: do not pass guidance "
                    "(compile a guidance family to choose it per request)"
                )
            return None
        lo, hi = self.guidance_range
        if guidance is None:
            raise BNSError(f"this artifact takes guidance (B,) per sample in {lo:g}..{hi:g}: pass guidance")
        g = _array(guidance, "guidance")
        if _kind(g) not in ("f", "i", "u"):
            raise BNSError(f"guidance must hold real numbers, got dtype {g.dtype}")
        if tuple(g.shape) == ():
            g = g.expand(batch) if is_torch(g) else np.full(batch, g)
        if tuple(g.shape) != (batch,):
            raise BNSError(f"guidance has shape {tuple(g.shape)}, expected ({batch},) or one number")
        values = g.detach().float().cpu().numpy() if is_torch(g) else np.asarray(g, dtype=np.float64)
        if not np.all(np.isfinite(values)) or values.min() < lo or values.max() > hi:
            raise BNSError(f"guidance must be within the distilled range {lo:g}..{hi:g}, got {values.tolist()[:8]}")
        return g.float() if is_torch(g) else np.ascontiguousarray(g, dtype=np.float32)

    def _check_named(self, cond, batch: int) -> dict:
        """Named conditions: a {name: (B, *shape)} record with exactly the graph's names, each a tensor condition."""
        names = self.condition_names
        if not isinstance(cond, dict):
            raise BNSError(f"this artifact takes named conditions: pass {{{', '.join(names)}}} as a dict of arrays")
        if sorted(cond) != sorted(names):
            raise BNSError(f"conditions must be exactly {', '.join(names)}; got {', '.join(map(str, cond)) or 'none'}")
        return {n: self._check_cond(cond[n], batch, n, self.condition_shapes[n]) for n in names}

    def condition_feed(self, condition, guidance=None) -> dict:
        """The condition input(s) (and a family's guidance) by graph input name, as numpy (for runtimes
        that take a feed dict)."""
        feed = {} if guidance is None else {GUIDANCE_INPUT: to_numpy(guidance, np.float32)}
        if not self.conditional:
            return feed
        if self.named_conditions:
            return {**{n: to_numpy(v, np.float32) for n, v in condition.items()}, **feed}
        return {self.condition_name: to_numpy(condition, self.condition_dtype), **feed}

    def condition_tensor(self, condition, device):
        """Checked labels or cond as a torch tensor of the graph's dtype on `device` (torch backends); named
        conditions as a {name: tensor} record."""
        import torch

        if self.named_conditions:
            return {n: self._float_tensor(v, device) for n, v in condition.items()}
        dtype = torch.float32 if self.condition_dtype == np.float32 else torch.long
        if is_torch(condition):  # stays on its device until moved: no round trip through the host
            return condition.to(device=device, dtype=dtype)
        return torch.as_tensor(to_numpy(condition, self.condition_dtype)).to(device)

    def _float_tensor(self, x, device):
        import torch

        if is_torch(x):
            return x.to(device=device, dtype=torch.float32)
        return torch.as_tensor(to_numpy(x, np.float32)).to(device)

    def condition_args(self, condition, device, guidance=None) -> list:
        """The condition inputs (and a family's guidance) as torch tensors in the graph's input order (torch
        backends)."""
        extra = [] if guidance is None else [self._float_tensor(guidance, device)]
        if not self.conditional:
            return extra
        cond = self.condition_tensor(condition, device)
        return ([cond[n] for n in self.condition_names] if self.named_conditions else [cond]) + extra

    def __call__(self, noise, condition=None, guidance=None):
        """The artifact's product: its last output (the image with a decoder, else the sample)."""
        return self.run(noise, condition, guidance)[self.output_names[-1]]

    def run(self, noise, condition=None, guidance=None) -> dict:
        """Every output by name, in the graph's order; kind and device follow `noise`.  guidance: a family
        artifact's scale, one number or one per sample."""
        noise, condition = self.check_inputs(noise, condition)
        guidance = self.check_guidance(guidance, int(noise.shape[0]))
        return {k: follow(v, noise) for k, v in self.infer(noise, condition, guidance).items()}

    @abstractmethod
    def infer(self, noise, condition, guidance=None) -> dict:
        """Run the sampler on checked inputs: {output name: array or tensor} (`run` converts to noise's kind)."""
