"""The runner interface shared by every backend, with the manifest's input checks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import BNSError

NULL_LABEL = -1  # the unconditional branch (same value as bns_export.fields.NULL_LABEL)


class Runner:
    """Callable artifact: runner(noise (B, *shape) float32 [, labels (B,) int64]) -> samples (B, *shape)."""

    def __init__(self, folder: str | Path, manifest: dict) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.sample_shape = tuple(manifest["sample_shape"])
        self.max_batch = int(manifest["max_batch"])
        self.conditional = manifest.get("num_classes") is not None
        self.num_classes = manifest.get("num_classes")
        self.nfe = int(manifest["nfe"])
        self._lock = threading.Lock()  # for backends whose contexts are not thread-safe

    def check_inputs(self, noise, labels) -> None:
        """One clear error for a wrong shape, a batch beyond the built maximum, or missing labels."""
        shape = tuple(noise.shape)
        if len(shape) != len(self.sample_shape) + 1 or shape[1:] != self.sample_shape:
            raise BNSError(f"noise has shape {shape}, expected (B, {', '.join(map(str, self.sample_shape))})")
        if not 1 <= shape[0] <= self.max_batch:
            raise BNSError(f"batch {shape[0]} is outside 1..{self.max_batch}, the range this artifact was built for")
        if self.conditional:
            if labels is None:
                raise BNSError("this artifact is class-conditional: labels (B,) int64 are required")
            if tuple(labels.shape) != (shape[0],):
                raise BNSError(f"labels have shape {tuple(labels.shape)}, expected ({shape[0]},)")
            lab = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
            if lab.size and (lab.min() < NULL_LABEL or lab.max() >= self.num_classes):
                raise BNSError(f"labels must be in 0..{self.num_classes - 1} (or {NULL_LABEL} for unconditional)")
        elif labels is not None:
            raise BNSError("this artifact is unconditional: do not pass labels")

    def __call__(self, noise, labels=None):
        self.check_inputs(noise, labels)
        return self.run(noise, labels)

    def run(self, noise, labels):
        raise NotImplementedError
