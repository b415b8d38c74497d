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

from ..contract import GUIDANCE_INPUT, NULL_LABEL, TABLE_INPUT, ConditionKind, Manifest, Signature
from ..errors import BNSError
from ..sizes import SizeSet, concrete


@dataclass(frozen=True)
class ExportRequest:
    """What an exporter needs besides the module: the graph's signature (built once by compile), the base
    sample shape, the batch range, a family's guidance range, the sizes, the device and backend knobs."""

    sample_shape: tuple[int, ...]
    signature: Signature
    max_batch: int
    opt_batch: int
    device: str = "cpu"
    metadata: dict = field(default_factory=dict)
    workspace_bytes: int = 2 << 30
    timing_cache: str | None = None
    #: build an engine whose weights `refit` can replace (TensorRT's BuilderFlag.REFIT); ONNX graphs always are
    refittable: bool = False
    #: a guidance family's range: the graph then takes guidance (B,) float32 last; else None
    guidance_range: tuple[float, float] | None = None
    #: the spatial sizes the graph takes (its noise's last two axes are then dynamic); None: sample_shape only
    sizes: SizeSet | None = None
    #: a loop graph's table count (its `table` input indexes 0..tables-1); 0: one table, unrolled
    tables: int = 0

    @property
    def input_names(self) -> list[str]:
        """Every graph input in order: noise, then the condition input(s), then guidance with a family."""
        return self.signature.input_names

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs: sample, and image with a decoder."""
        return self.signature.output_names


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


def check_graph_metadata(meta: dict, manifest: Manifest) -> None:
    """The graph's own metadata must hold every key the exporter wrote that its manifest names, and agree with it
    (a swapped graph whose hash was updated is caught, and so is one whose metadata was stripped)."""
    model_file, manifest = manifest.model_file, manifest.to_json()
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


def profile_shapes(inputs, opt_batch: int, max_batch: int, sizes: SizeSet | None) -> list[dict]:
    """A TensorRT optimisation profile's min, opt and max shape of every graph input (manifest specs): batch 1
    at the smallest declared size, the opt batch at the size the solver was distilled at, the max batch at the
    largest (TensorRT builds for that box; the runner admits only the declared sizes inside it)."""
    lo, hi = sizes.bounds if sizes is not None else (None, None)
    base = sizes.base if sizes is not None else None
    points = ((1, lo), (opt_batch, base), (max_batch, hi))
    return [{s.name: concrete(s.json_shape, b, size) for s in inputs} for b, size in points]


def profile_strings(manifest: Manifest | dict) -> list[str]:
    """profile_shapes as ONNX Runtime's TensorRT options spell them (`noise:1x4x64x64,cond:1x77x768`)."""
    manifest = Manifest.of(manifest)
    inputs = manifest.signature.inputs
    profile = profile_shapes(inputs, manifest.opt_batch or 1, manifest.max_batch, manifest.sizes)
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
    {name: (B, ...) float32} for named conditions][, guidance=(B,) for a family][, table=(B,) for a loop graph])
    -> its product (B, ...): images with a decoder in the graph, else samples."""

    #: where the backend computes ("cpu", "cuda", "cuda:1")
    device: str = "cpu"

    def __init__(self, folder: str | Path, manifest: Manifest | dict) -> None:
        self.folder = Path(folder)
        #: the artifact's manifest as the typed record (a JSON object is read into one)
        self.manifest = manifest = Manifest.of(manifest)
        self.signature = sig = manifest.signature
        self.sample_shape = manifest.sample_shape
        self.max_batch = manifest.max_batch
        self.num_classes = manifest.num_classes
        self.cond_shape = manifest.cond_shape
        self.conditional = sig.conditional
        #: named conditions (SDXL, SD3, Flux, ...): the condition is a {name: array} record
        self.named_conditions = sig.kind is ConditionKind.NAMED
        #: the graph's one condition input ("labels" or "cond") and its numpy dtype; None for named or none
        single = sig.kind in (ConditionKind.LABELS, ConditionKind.TENSOR)
        self.condition_name = sig.conditions[0].name if single else None
        self._dtypes = {c.name: c.numpy_dtype for c in sig.conditions}
        #: the graph's condition inputs, in order, and one sample's shape each
        self.condition_names = sig.condition_names
        self.condition_shapes = sig.condition_shapes
        #: a guidance family's range: guidance (B,) is then an input (None: the artifact bakes one scale)
        self.guidance_range = manifest.guidance_range
        #: every graph input in order: noise, the condition(s), then guidance with a family
        self.input_names = sig.input_names
        self.nfe = manifest.nfe
        #: the graph's outputs in order ("sample", then "image" with a decoder) and one item's shape each
        self.output_names = sig.output_names
        self.output_shapes = {o.name: o.json_shape for o in sig.outputs}
        #: the spatial sizes the graph takes (None: sample_shape only)
        self.sizes = manifest.sizes
        #: a loop graph's solver tables (the `table` input indexes them); empty for a baked table
        self.tables = manifest.tables
        self._lock = threading.Lock()  # for backends whose contexts are not thread-safe

    def check_inputs(self, noise, condition) -> tuple:
        """Noise: array-like of real floats, finite, shape (B, *sample_shape), 1 <= B <= max_batch; the condition,
        exactly when the artifact is conditional: labels (integers in 0..K-1 or -1, shape (B,)), one tensor, or a
        {name: array} record.  Returns the noise (lists become numpy arrays) and the condition as the graph's
        record {input name: array} (None when unconditional); anything else is one clear error."""
        noise = _array(noise, "noise")
        shape = tuple(noise.shape)
        self._check_noise_shape(shape)
        if not 1 <= shape[0] <= self.max_batch:
            raise BNSError(f"batch {shape[0]} is outside 1..{self.max_batch}, the range this artifact was built for")
        if _kind(noise) != "f":
            raise BNSError(f"noise must hold real floating-point numbers, got dtype {noise.dtype}")
        if not _all_finite(noise):
            raise BNSError("noise holds NaN or inf (or values beyond float32's range)")
        return noise, self._condition_record(condition, shape[0])

    def _condition_record(self, condition, batch: int) -> dict | None:
        """The condition as the graph's named record {input name: array}, each input checked; labels or one tensor
        given alone are the record of the graph's one condition input; None for an unconditional artifact."""
        names, kind = self.condition_names, self.signature.kind
        if kind is ConditionKind.NONE:
            if condition is not None:
                raise BNSError("this artifact is unconditional: do not pass labels")
            return None
        if isinstance(condition, dict):
            if sorted(condition) != sorted(names):
                got = ", ".join(map(str, condition)) or "none"
                raise BNSError(f"conditions must be exactly {', '.join(names)}; got {got}")
            record = condition
        elif condition is None or kind is ConditionKind.NAMED:
            cond = _dims(self.cond_shape or ())
            needed = {
                ConditionKind.LABELS: "this artifact is class-conditional: labels (B,) int64 are required",
                ConditionKind.TENSOR: f"this artifact is conditioned on a tensor: cond (B, {cond}) is required",
                ConditionKind.NAMED: f"this artifact takes named conditions: pass {{{', '.join(names)}}} as a dict of "
                "arrays",
            }
            raise BNSError(needed[kind])
        else:
            record = {names[0]: condition}
        return {n: self._check_condition(n, record[n], batch) for n in names}

    def _check_condition(self, name: str, value, batch: int):
        """One condition input: class labels, integers in 0..K-1 or -1 of shape (B,); else a tensor condition."""
        if self._dtypes[name] != np.int64:
            return self._check_cond(value, batch, name, self.condition_shapes[name])
        labels = _array(value, "labels")
        if tuple(labels.shape) != (batch,):
            raise BNSError(f"labels have shape {tuple(labels.shape)}, expected ({batch},)")
        if _kind(labels) not in ("i", "u"):
            raise BNSError(f"labels must be integers (class indices), got dtype {labels.dtype}")
        lab = labels.detach().cpu().numpy() if is_torch(labels) else labels  # its own dtype: no wrap to int64 yet
        if lab.size and (int(lab.min()) < NULL_LABEL or int(lab.max()) >= self.num_classes):
            raise BNSError(f"labels must be in 0..{self.num_classes - 1} (or {NULL_LABEL} for unconditional)")
        return labels

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
                    f"this artifact bakes guidance {self.manifest.guidance}: do not pass guidance "
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

    def check_table(self, table, batch: int):
        """A loop graph's table index: one integer (every sample) or (B,) integers in 0..K-1, None for table 0; an
        artifact with one baked table takes none.  Returns an int64 (B,) numpy array, or None."""
        if not self.tables:
            if table is not None:
                raise BNSError("this artifact bakes one solver table: do not pass table (compile --format onnx-loop)")
            return None
        t = np.zeros(batch, dtype=np.int64) if table is None else _array(table, TABLE_INPUT)
        if _kind(t) not in ("i", "u"):
            raise BNSError(f"table must be integers (indices of the artifact's tables), got dtype {t.dtype}")
        t = t.detach().cpu().numpy() if is_torch(t) else np.asarray(t)
        t = np.full(batch, t) if t.shape == () else t
        if t.shape != (batch,):
            raise BNSError(f"table has shape {t.shape}, expected ({batch},) or one number")
        if t.size and (int(t.min()) < 0 or int(t.max()) >= len(self.tables)):
            names = ", ".join(f"{i} {e.name} (NFE {e.nfe})" for i, e in enumerate(self.tables))
            raise BNSError(f"table must be in 0..{len(self.tables) - 1}: {names}")
        return t.astype(np.int64)

    def condition_feed(self, record: dict | None, guidance=None, table=None) -> dict:
        """The checked condition record (and a family's guidance, a loop graph's table index) by graph input name,
        as numpy (for runtimes that take a feed dict)."""
        feed = {n: to_numpy(v, self._dtypes[n]) for n, v in (record or {}).items()}
        if guidance is not None:
            feed[GUIDANCE_INPUT] = to_numpy(guidance, np.float32)
        if table is not None:
            feed[TABLE_INPUT] = table
        return feed

    def condition_tensors(self, record: dict, device) -> dict:
        """The checked condition record as torch tensors of the graph's dtypes on `device` (torch backends); a
        torch input stays on its device until moved (no round trip through the host)."""
        import torch

        out = {}
        for n, v in record.items():
            dtype = torch.float32 if self._dtypes[n] == np.float32 else torch.long
            out[n] = v.to(device=device, dtype=dtype) if is_torch(v) else torch.as_tensor(to_numpy(v, self._dtypes[n]))
            out[n] = out[n].to(device)
        return out

    def _float_tensor(self, x, device):
        import torch

        if is_torch(x):
            return x.to(device=device, dtype=torch.float32)
        return torch.as_tensor(to_numpy(x, np.float32)).to(device)

    def condition_args(self, record: dict | None, device, guidance=None, table=None) -> list:
        """The condition inputs (and a family's guidance, a loop graph's table index) as torch tensors in the graph's
        input order (torch backends)."""
        import torch

        extra = [] if guidance is None else [self._float_tensor(guidance, device)]
        if table is not None:
            extra.append(torch.as_tensor(table, dtype=torch.long).to(device))
        tensors = self.condition_tensors(record, device) if record else {}
        return [tensors[n] for n in self.condition_names] + extra

    def __call__(self, noise, condition=None, guidance=None, table=None):
        """The artifact's product: its last output (the image with a decoder, else the sample)."""
        return self.run(noise, condition, guidance, table)[self.output_names[-1]]

    def run(self, noise, condition=None, guidance=None, table=None) -> dict:
        """Every output by name, in the graph's order; kind and device follow `noise`.  guidance: a family
        artifact's scale, one number or one per sample; table: a loop artifact's table index (default 0)."""
        noise, condition = self.check_inputs(noise, condition)
        guidance = self.check_guidance(guidance, int(noise.shape[0]))
        table = self.check_table(table, int(noise.shape[0]))
        return {k: follow(v, noise) for k, v in self.infer(noise, condition, guidance, table).items()}

    @abstractmethod
    def infer(self, noise, condition, guidance=None, table=None) -> dict:
        """Run the sampler on checked inputs: {output name: array or tensor} (`run` converts to noise's kind);
        table: a loop artifact's int64 (B,) indices, None for every other artifact."""
