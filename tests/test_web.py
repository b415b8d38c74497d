"""The artifact in a browser: examples/web (a static page on onnxruntime-web, no solver code) opened in headless
Chromium through examples/web/check.mjs draws the digits and digits-text artifacts' samples; the pixels it draws are
the Python runtime's samples for the same noise and condition, and a tampered model file is one line on the page.
Skipped where node, Chromium (Debian's chromium package, or $CHROMIUM) or the example's node_modules is missing:
tools/setup.sh runs `npm ci` there when npm is installed, .ci/run installs Chromium."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from bns_export.compile.build import compile_artifact
from bns_export.runtime import load

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "web"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    NODE is None
    or CHROMIUM is None
    or not all((EXAMPLE / "node_modules" / p).is_dir() for p in ("onnxruntime-web", "playwright-core")),
    reason="node, chromium or examples/web/node_modules is missing (tools/setup.sh runs npm ci there when npm is "
    "installed; .ci/run installs Debian's chromium)",
)


class Quiet(http.server.SimpleHTTPRequestHandler):
    """A static file server for the page, onnxruntime-web and the artifacts, without a log line per request."""

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A loopback server over a folder holding the page, onnxruntime-web's dist/ and two artifacts."""
    root = tmp_path_factory.mktemp("web")
    for name in ("index.html", "sample.js"):
        shutil.copy(EXAMPLE / name, root / name)
    (root / "ort").symlink_to(EXAMPLE / "node_modules" / "onnxruntime-web" / "dist")
    for model in ("digits", "digits-text"):
        compile_artifact(model, "euler", "onnx", root / model, nfe=2, max_batch=2, log=lambda m: None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def open_page(url: str) -> dict:
    """What the page drew, as check.mjs reports it."""
    r = subprocess.run([NODE, str(EXAMPLE / "check.mjs"), url], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CHROMIUM": CHROMIUM})  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _entry(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}


@pytest.mark.parametrize("model", ["digits", "digits-text"])
def test_the_page_draws_the_python_runtimes_samples(site, model):
    root, url = site
    runner = load(root / model)
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((2, *runner.sample_shape)).astype(np.float32)
    inputs, cond = {"noise": _entry(noise)}, None
    if runner.condition_name == "cond":
        cond = rng.standard_normal((2, *runner.cond_shape)).astype(np.float32)
        inputs["cond"] = _entry(cond)
    (root / f"inputs-{model}.json").write_text(json.dumps(inputs))
    drawn = open_page(f"{url}/index.html?artifact={model}/&ort=ort/&inputs=inputs-{model}.json")
    assert "error" not in drawn["result"], drawn
    samples = runner(noise, cond)  # (2, 1, 8, 8), drawn side by side with a one-pixel gap
    want = np.floor(np.clip(samples, -1, 1) * 127.5 + 127.5 + 0.5)
    h, w = samples.shape[-2:]
    assert (drawn["width"], drawn["height"]) == (2 * w + 1, h)
    rgba = np.array(drawn["pixels"], dtype=np.int64).reshape(h, 2 * w + 1, 4)
    got = np.stack([rgba[:, i * (w + 1) : i * (w + 1) + w, 0] for i in range(2)])
    assert np.abs(got - want[:, 0]).max() <= 1  # float32 in two runtimes: at most one step of 255 apart
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 3] == 255).all()


def test_a_tampered_model_is_one_line_on_the_page(site):
    root, url = site
    tampered = root / "tampered"
    shutil.copytree(root / "digits", tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:-1] + b"\0")
    drawn = open_page(f"{url}/index.html?artifact=tampered/&ort=ort/")
    assert drawn["result"] == {"error": "model.onnx does not match its manifest's sha256"}
    assert drawn["status"] == "error: model.onnx does not match its manifest's sha256"
