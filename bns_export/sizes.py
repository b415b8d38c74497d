"""Sample sizes: the spatial sizes (H, W) a network accepts and the set an artifact declares (`--sizes`).

A network that runs at any size (a convolutional UNet) states its `size_step`, the multiple every
spatial size must be (its total downsampling); one that is traced at a single size (position
embeddings or ids computed at load time) states None.  `SizeSet` is the declared set a compiled
graph's spatial axes are dynamic over: a list (`512x512,768x512`) or a range (`256x256:768x768`,
every multiple of the step in between), parsed here once and recorded in the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BNSError

#: the largest spatial size accepted anywhere (a sample's H or W)
MAX_SIDE = 1 << 14
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")

Size = tuple[int, int]


def parse_size(text: str, what: str = "--sizes") -> Size:
    """`HxW` (e.g. 768x512: height 768, width 512) as (H, W)."""
    m = _SIZE.match(text)
    if m is None:
        raise BNSError(f"bad {what} entry {text.strip()!r}: expected HxW such as 768x512")
    h, w = int(m.group(1)), int(m.group(2))
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise BNSError(f"bad {what} entry {text.strip()!r}: each side must be in 1..{MAX_SIDE}")
    return h, w


def check_side_step(size: Size, step: int, what: str) -> None:
    """Both sides multiples of `step` (the network's total downsampling)."""
    if size[0] % step or size[1] % step:
        raise BNSError(f"{what} {size[0]}x{size[1]} is not a multiple of {step} on both sides (the network needs that)")


def resize_shape(base: tuple[int, ...], size: Size) -> tuple[int, ...]:
    """A sample shape (..., H, W) with its last two axes replaced by `size`."""
    return (*base[:-2], *size)


@dataclass(frozen=True)
class SizeSet:
    """The spatial sizes a graph takes, in sample units: `sizes` listed, or every (H, W) with lo <= H, W <= hi
    (per axis) on multiples of `step` when `ranged`; `base` is the size the solver was distilled at."""

    base: Size
    step: int
    sizes: tuple[Size, ...] = ()
    lo: Size | None = None
    hi: Size | None = None
    #: image pixels per sample unit: a decoder in the graph upsamples the sample by it (1 without one)
    scale: int = 1

    @property
    def ranged(self) -> bool:
        return self.lo is not None

    def __contains__(self, size: Size) -> bool:
        size = (int(size[0]), int(size[1]))
        if not self.ranged:
            return size in self.sizes or size == self.base
        return (
            all(lo <= s <= hi for s, lo, hi in zip(size, self.lo, self.hi))
            and size[0] % self.step == 0
            and size[1] % self.step == 0
        )

    @property
    def bounds(self) -> tuple[Size, Size]:
        """The smallest and largest (H, W) per axis: a TensorRT profile's min and max."""
        if self.ranged:
            return self.lo, self.hi
        hs, ws = zip(*(*self.sizes, self.base))
        return (min(hs), min(ws)), (max(hs), max(ws))

    def probes(self) -> tuple[Size, ...]:
        """The sizes validation runs at: every listed size, or a range's corners and the base."""
        if not self.ranged:
            return tuple(dict.fromkeys((self.base, *self.sizes)))
        (h0, w0), (h1, w1) = self.lo, self.hi
        return tuple(dict.fromkeys((self.base, (h0, w0), (h1, w1), (h0, w1), (h1, w0))))

    def describe(self) -> str:
        """`8x8,12x8` or `8x8:16x16 (step 2)`: for messages."""
        if self.ranged:
            return f"{self.lo[0]}x{self.lo[1]}:{self.hi[0]}x{self.hi[1]} (multiples of {self.step})"
        return ",".join(f"{h}x{w}" for h, w in self.probes())

    def to_json(self) -> dict:
        d = {"base": list(self.base), "step": self.step, "scale": self.scale}
        if self.ranged:
            return {**d, "min": list(self.lo), "max": list(self.hi)}
        return {**d, "list": [list(s) for s in self.probes()]}

    @classmethod
    def from_json(cls, d) -> SizeSet:
        """A manifest's `sizes` record, every field checked (one line, exit 2)."""
        if not isinstance(d, dict) or not isinstance(d.get("step"), int) or not 1 <= d["step"] <= MAX_SIDE:
            raise BNSError("manifest sizes must be {'base': [H, W], 'step': int, 'list' | 'min' and 'max': ...}")

        def size(v) -> Size:
            if not isinstance(v, list) or len(v) != 2 or not all(isinstance(s, int) and 1 <= s <= MAX_SIDE for s in v):
                raise BNSError(f"manifest sizes entry {v!r} is not [H, W] with sides in 1..{MAX_SIDE}")
            return int(v[0]), int(v[1])

        base, scale = size(d.get("base")), d.get("scale", 1)
        if not isinstance(scale, int) or not 1 <= scale <= 64:
            raise BNSError(f"manifest sizes scale must be an integer in 1..64, got {scale!r}")
        if "list" in d:
            if not isinstance(d["list"], list) or not d["list"] or len(d["list"]) > 256:
                raise BNSError("manifest sizes list must hold 1..256 sizes")
            listed = tuple(size(s) for s in d["list"])
            return cls(base, d["step"], tuple(s for s in listed if s != base), scale=scale)
        return cls(base, d["step"], lo=size(d.get("min")), hi=size(d.get("max")), scale=scale)

    def symbolic(self, shape: tuple[int, ...], image: bool = False) -> list:
        """A tensor's manifest shape with its spatial axes named: (C, "height", "width"), or the image's
        (3, "image_height", "image_width")."""
        return [*shape[:-2], *(IMAGE_AXES if image else AXES)]


#: the names of a sample's dynamic spatial axes in manifest shapes, and of the decoded image's
AXES = ("height", "width")
IMAGE_AXES = ("image_height", "image_width")


def concrete(shape: list, batch: int, size: Size | None = None, scale: int = 1) -> tuple[int, ...]:
    """A manifest shape (["batch", ..., "height", "width"]) at a batch and a sample size: the one place the
    symbolic axes are resolved (runners' outputs, TensorRT profiles, Triton warmups)."""
    values = {"batch": batch}
    if size is not None:
        values.update(zip((*AXES, *IMAGE_AXES), (*size, size[0] * scale, size[1] * scale)))
    return tuple(values[d] if isinstance(d, str) else int(d) for d in shape)


def parse_sizes(
    text: str, base: Size, step: int | None, scale: int = 1, what: str = "--sizes", limit: int | None = None
) -> SizeSet:
    """`--sizes` as a SizeSet in sample units: `HxW,HxW,...` or `HxW:HxW` (a range), given in image pixels
    when `scale` > 1 (a decoder upsamples the sample by it), each side a multiple of scale * step and at most
    `limit` sample units (the network's largest side, if it has one)."""
    if step is None:
        raise BNSError(
            f"{what}: this model runs at its own sample shape only (UNets, SD3 and Sana run at other sizes; this "
            "network's position embeddings or ids are computed once, for the size it is loaded at)"
        )
    text = (text or "").strip()
    unit = scale * step

    def sample(entry: str) -> Size:
        h, w = parse_size(entry, what)
        check_side_step((h, w), unit, f"{what} entry")
        if limit is not None and max(h, w) > limit * scale:
            raise BNSError(f"{what} entry {entry.strip()} exceeds {limit * scale}, the largest side this network takes")
        return h // scale, w // scale

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise BNSError(f"bad {what} {text!r}: a range is HxW:HxW")
        lo, hi = (sample(p) for p in parts)
        if lo[0] > hi[0] or lo[1] > hi[1]:
            raise BNSError(f"bad {what} {text!r}: the range's first size must not exceed its second on either side")
        if not (lo[0] <= base[0] <= hi[0] and lo[1] <= base[1] <= hi[1]):
            raise BNSError(f"{what} {text!r} does not contain the size the solver runs at ({_pixels(base, scale)})")
        return SizeSet(base, step, lo=lo, hi=hi, scale=scale)
    entries = [e for e in text.split(",") if e.strip()]
    if not entries:
        raise BNSError(f"bad {what} {text!r}: expected HxW,HxW,... or HxW:HxW")
    if len(entries) > 64:
        raise BNSError(f"{what} lists {len(entries)} sizes; at most 64 (use a range HxW:HxW for more)")
    sizes = tuple(dict.fromkeys(sample(e) for e in entries))
    return SizeSet(base, step, tuple(s for s in sizes if s != base), scale=scale)


def _pixels(size: Size, scale: int) -> str:
    return f"{size[0] * scale}x{size[1] * scale}"
