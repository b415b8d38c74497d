"""The example HTTP service (tools/serve_http.py): concurrent requests are batched and answered correctly."""

import json
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bns_export.compile.build import compile_artifact
from bns_export.runtime import load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from serve_http import make_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    art = tmp_path_factory.mktemp("http") / "gmm"
    compile_artifact("analytic:gmm-cond", "euler", "onnx", art, nfe=2, max_batch=4, guidance=2.0, log=lambda m: None)
    srv, batcher = make_server(str(art), port=0, max_delay_ms=50)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", batcher, load(art)
    srv.shutdown()


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/sample", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_concurrent_requests_are_batched_and_correct(server):
    url, batcher, runner = server
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        assert json.loads(r.read())["max_batch"] == 4
    before = batcher.batches
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: _post(url, {"seed": k, "label": k % 8}), range(8)))
    assert all(code == 200 for code, _ in results)
    assert batcher.batches - before < 8  # some requests shared a batch
    for k, (_, body) in enumerate(results):
        noise = np.random.default_rng(k).standard_normal((1, 8, 8)).astype(np.float32)
        expected = runner(noise[None], np.array([k % 8]))[0]
        assert np.allclose(np.array(body["sample"]), expected, atol=1e-5)


@pytest.mark.parametrize("body", [{"seed": -1}, {"label": 99}, {"noise": [1, 2]}, {"noise": [[["x"]]]}, {"seed": 1.5}])
def test_bad_requests_get_400_and_one_line(server, body):
    code, answer = _post(server[0], body)
    assert code == 400 and "\n" not in answer["error"]
