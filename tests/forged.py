"""Artifacts changed by hand, as an attacker or a later tool version would: a manifest edited in place, and an
artifact that claims to hold a TensorRT engine (these machines cannot build one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bns_export.runtime.artifact import sha256_file


def edit(path: Path, fn) -> None:
    """Apply `fn` to the JSON object in `path` and write it back."""
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def as_tensorrt(src: Path, dest: Path, **fields) -> Path:
    """A copy of the ONNX artifact `src` whose manifest says TensorRT (and `fields`), with a plan file beside its graph
    (its bytes never matter: it is refused, or TensorRT is missing, before it is read)."""
    shutil.copytree(src, dest)
    (dest / "model.plan").write_bytes(b"not read")

    def change(m):
        m.update(format="tensorrt", model_file="model.plan", **fields)
        m["files"]["model.plan"] = sha256_file(dest / "model.plan")

    edit(dest / "manifest.json", change)
    return dest
