"""The artifact outside Python: examples/node/sample.mjs (onnxruntime-node, no solver code) samples digits and
digits-text artifacts; its samples equal the Python runtime's for the same noise and condition to 1e-5, it draws
them as a PNG, and bad input is one line.  Skipped where node or the example's node_modules is missing (tools/setup.sh
runs `npm ci` there when npm is installed)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bns_export.compile.build import compile_artifact
from bns_export.runtime import load

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None or not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(),
    reason="node or examples/node/node_modules is missing (tools/setup.sh runs npm ci there when npm is installed)",
)


def node(*args) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(EXAMPLE / "sample.mjs"), *map(str, args)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    for model in ("digits", "digits-text"):
        compile_artifact(model, "euler", "onnx", root / model, nfe=2, max_batch=2, log=lambda m: None)
    return root


@pytest.mark.parametrize("model", ["digits", "digits-text"])
def test_node_samples_equal_the_python_runtime(artifacts, model, tmp_path):
    art = artifacts / model
    runner = load(art)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((2, *runner.sample_shape)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    inputs, cond = ["--input", f"noise={tmp_path / 'noise.npy'}"], None
    if runner.condition_name == "labels":
        cond = np.array([3, -1], dtype=np.int64)
    elif runner.condition_name == "cond":
        cond = rng.standard_normal((2, *runner.cond_shape)).astype(np.float32)
    if cond is not None:
        np.save(tmp_path / "cond.npy", cond)
        inputs += ["--input", f"{runner.condition_name}={tmp_path / 'cond.npy'}"]
    r = node(art, *inputs, "--npy", tmp_path / "out.npy", "--png", tmp_path / "out.png")
    assert r.returncode == 0, r.stderr
    ours, theirs = np.load(tmp_path / "out.npy"), runner(noise, cond)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-5 * max(1.0, np.abs(theirs).max())
    png = (tmp_path / "out.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (width, height) == (2 * noise.shape[-1] + 1, noise.shape[-2])


def test_node_refuses_bad_input_in_one_line(artifacts, tmp_path):
    np.save(tmp_path / "noise.npy", np.zeros((2, 3, 5, 5), np.float32))
    r = node(artifacts / "digits", "--input", f"noise={tmp_path / 'noise.npy'}", "--npy", tmp_path / "out.npy")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: noise is float32")
    assert not (tmp_path / "out.npy").exists()
    tampered = tmp_path / "tampered"
    shutil.copytree(artifacts / "digits", tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:-1] + b"\0")
    r = node(tampered)
    assert r.returncode == 2 and "sha256" in r.stderr and "Traceback" not in r.stderr
