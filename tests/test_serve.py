"""`bns-export serve`: the Open Inference Protocol (KServe v2) on uvicorn, driven by Triton's own HTTP client and
by hand: results equal the runtime's, concurrent requests share batches, hostile requests get one-line 4xx
answers before anything is allocated, slow clients are cut off, and a bounded load on the loopback is answered."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("uvicorn", reason="uvicorn (the serve extra) is not installed")
pytest.importorskip("starlette", reason="starlette (the serve extra) is not installed")

from httpclient import serving  # noqa: E402

from bns_export.cli import main  # noqa: E402
from bns_export.compile.build import compile_artifact  # noqa: E402
from bns_export.runtime import load  # noqa: E402


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "gmm"
    compile_artifact("analytic:gmm-cond", "euler", "onnx", out, nfe=2, max_batch=4, guidance=2.0, log=lambda m: None)
    return out


def _noise(k: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(k).standard_normal((batch, 1, 8, 8)).astype(np.float32)


def test_tritons_http_client_works_unchanged(art):
    http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (test-only) is not installed")
    runner = load(art)
    with serving(art) as srv:
        client = http.InferenceServerClient(f"127.0.0.1:{srv.port}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("gmm")
        meta = client.get_model_metadata("gmm")
        assert [i["name"] for i in meta["inputs"]] == ["noise", "labels"] and meta["inputs"][0]["shape"][0] == -1
        noise, labels = _noise(1, 3), np.array([0, 5, -1], np.int64)
        for binary in (True, False):
            inputs = [http.InferInput("noise", list(noise.shape), "FP32"), http.InferInput("labels", [3], "INT64")]
            inputs[0].set_data_from_numpy(noise, binary_data=binary)
            inputs[1].set_data_from_numpy(labels, binary_data=binary)
            out = client.infer("gmm", inputs, outputs=[http.InferRequestedOutput("sample", binary_data=binary)])
            assert np.allclose(out.as_numpy("sample"), runner(noise, labels), atol=1e-6)
        with pytest.raises(Exception, match="unknown input 'cond'"):
            bad = http.InferInput("cond", [1, 4], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 4), np.float32))
            client.infer("gmm", [bad])


def test_concurrent_requests_share_batches_and_are_correct(art):
    runner = load(art)
    with serving(art) as srv:
        batcher = srv.models["gmm"].batcher
        before = batcher.batches
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda k: srv.infer("gmm", {"noise": _noise(k), "labels": np.array([k % 8])}),
                                    range(8)))  # fmt: skip
        assert all(code == 200 for code, _ in results), results
        assert batcher.batches - before < 8  # some requests shared a batch
        for k, (_, out) in enumerate(results):
            assert np.allclose(out["sample"], runner(_noise(k), np.array([k % 8])), atol=1e-5)


def _entry(name, shape, datatype="FP32", data=None) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data if data is not None else [0.0]}


HOSTILE = [
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[0.0] * 64), _entry("cond", [1, 4], data=[0.0] * 4)]},
     "unknown input 'cond'"),  # a field the artifact does not take
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[True] * 64), _entry("labels", [1], "INT64", [1])]},
     "no booleans"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[float("nan")] * 64), _entry("labels", [1], "INT64", [1])]},
     "NaN"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[0.0] * 64), _entry("labels", [1], "INT64", [99])]}, "labels"),
    ({"inputs": [_entry("noise", [1, 1, 16384, 16384]), _entry("labels", [1], "INT64", [1])]}, "body limit"),
    ({"inputs": [_entry("noise", [1, 1, 12, 12], data=[0.0] * 144), _entry("labels", [1], "INT64", [1])]}, "shape"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], "FP64", [0.0] * 64)]}, "is FP32"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[0.0] * 64)]}, "missing input(s) labels"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[0.0] * 63), _entry("labels", [1], "INT64", [1])]}, "64 numbers"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[0.0] * 64), _entry("labels", [1], "INT64", [1])], "seed": 3},
     "unknown request field"),
    ({"inputs": [_entry("noise", [9, 1, 8, 8], data=[0.0] * 576), _entry("labels", [9], "INT64", [1] * 9)]},
     "batch 9"),
    ({"inputs": [_entry("noise", [1, 1, 8, 8], data=[0.0] * 64), _entry("labels", [1], "INT64", [1]),
                 _entry("guidance", [1], data=[9.0])]}, "unknown input 'guidance'"),  # a baked scale
]  # fmt: skip


@pytest.mark.parametrize("request_body, needle", HOSTILE)
def test_hostile_requests_get_one_line_4xx_and_the_server_lives_on(art, request_body, needle):
    with serving(art) as srv:
        code, _, body = srv.request("POST", "/v2/models/gmm/infer", json.dumps(request_body).encode())
        answer = json.loads(body)
        assert 400 <= code < 500 and needle in answer["error"] and "\n" not in answer["error"], (code, answer)
        assert srv.models["gmm"].batcher.alive
        code, out = srv.infer("gmm", {"noise": _noise(0), "labels": np.array([1])})
        assert code == 200 and np.isfinite(out["sample"]).all()


def test_malformed_http_is_refused(art):
    with serving(art) as srv:
        for raw in (
            b"POST /v2/models/gmm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: +10\r\n\r\n0123456789",
            b"POST /v2/models/gmm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST /v2/models/gmm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{not}",
            b"POST /v2/models/gmm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 200001\r\n\r\n" + b"[" * 200_001,
        ):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
                s.sendall(raw)
                assert s.recv(4096).startswith(b"HTTP/1.1 4"), raw[:60]
        code, _, _ = srv.request("POST", "/v2/models/gmm/infer", b"x" * 3000, {"Content-Type": "text/plain"})
        assert code == 400
        code, _, body = srv.request("GET", "/v2/models/nosuch")
        assert code == 404 and "unknown model" in json.loads(body)["error"]


def test_slow_clients_are_cut_off_and_valid_requests_are_served(art):
    """40 clients sending one header byte every 0.3 s cannot hold the server: each is closed at the header
    deadline, and a valid request meanwhile gets its answer; a body that trickles in gets 408."""
    with serving(art, header_timeout_s=1.0, body_timeout_s=1.0) as srv:
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(40)]
        start = time.monotonic()
        closed = set()
        while time.monotonic() - start < 30 and len(closed) < len(socks):  # 1 s deadline; slack for a busy machine
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    s.sendall(b"P")
                except OSError:
                    closed.add(i)
            time.sleep(0.3)
        code, _ = srv.infer("gmm", {"noise": _noise(2), "labels": np.array([2])}, timeout=10)
        assert code == 200
        assert len(closed) == len(socks)  # every slow client was closed (they would never stop on their own)
        for s in socks:
            s.close()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"POST /v2/models/gmm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            assert s.recv(4096).startswith(b"HTTP/1.1 408")


def test_a_bounded_load_is_answered(art):
    """200 requests at once on the loopback against a queue of 8: every one answered, 200 or 503."""
    with serving(art, queue_per_slot=2) as srv:

        def one(k: int):
            try:
                return srv.infer("gmm", {"noise": _noise(k), "labels": np.array([k % 8])}, timeout=60)[0]
            except (ConnectionError, OSError) as e:
                return repr(e)

        with ThreadPoolExecutor(64) as pool:
            codes = list(pool.map(one, range(200)))
        assert all(c in (200, 503) for c in codes), [c for c in codes if c not in (200, 503)][:5]
        assert codes.count(200) >= 8


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--port", "70000"], "--port"),
        (["--max-body", "-5"], "--max-body"),
        (["--header-timeout", "0"], "--header-timeout"),
        (["--queue-per-slot", "-1"], "--queue-per-slot"),
    ],
)
def test_bad_limits_are_one_line_at_start_up(art, args, needle):
    r = CliRunner().invoke(main, ["serve", str(art), *args])
    assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_two_artifacts_of_one_name_are_refused(art, tmp_path):
    import shutil

    other = tmp_path / "x" / "gmm"
    shutil.copytree(art, other)
    r = CliRunner().invoke(main, ["serve", str(art), str(other)])
    assert r.exit_code == 2 and "two artifacts are named gmm" in r.stderr


def test_tensor_conditioned_artifacts_take_their_condition_input(tmp_path):
    out = tmp_path / "text"
    compile_artifact("digits-text", "euler", "onnx", out, nfe=2, max_batch=2, guidance=2.0, log=lambda m: None)
    runner = load(out)
    cond = np.random.default_rng(0).standard_normal((1, *runner.cond_shape)).astype(np.float32)
    noise = _noise(3)
    with serving(out) as srv:
        code, answer = srv.infer("text", {"noise": noise, "cond": cond}, binary=False)
        assert code == 200 and np.allclose(answer["sample"], runner(noise, cond), atol=1e-5)
        code, answer = srv.infer("text", {"noise": noise})
        assert code == 400 and "missing input(s) cond" in answer["error"]
        code, answer = srv.infer("text", {"noise": noise, "cond": cond, "labels": np.array([1])})
        assert code == 400 and "unknown input 'labels'" in answer["error"]


def test_image_outputs_can_come_back_as_png(tmp_path):
    """`png`: each image a PNG (0..255 of the data range [-1, 1]) in a BYTES tensor, as the binary extension
    sends strings."""
    import zlib

    from bns_export.images import to_uint8

    out = tmp_path / "digits"
    compile_artifact("digits", "euler", "onnx", out, nfe=2, max_batch=2, log=lambda m: None)
    runner = load(out)
    noise = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with serving(out) as srv:
        entry = {"name": "noise", "shape": [2, 1, 8, 8], "datatype": "FP32"}
        entry["parameters"] = {"binary_data_size": noise.nbytes}
        header = {"inputs": [entry], "parameters": {"png": True}}
        data = json.dumps(header).encode()
        code, headers, body = srv.request("POST", "/v2/models/digits/infer", data + noise.tobytes(),
                                          {"Inference-Header-Content-Length": str(len(data))})  # fmt: skip
        assert code == 200
        length = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
        entry = json.loads(body[:length])["outputs"][0]
        assert entry["datatype"] == "BYTES" and entry["shape"] == [2]
        tail, expected = body[length:], to_uint8(runner(noise))
        for k in range(2):
            size = int.from_bytes(tail[:4], "little")
            png, tail = tail[4 : 4 + size], tail[4 + size :]
            assert png.startswith(b"\x89PNG")
            raw = zlib.decompress(png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8])
            pixels = np.frombuffer(raw, np.uint8).reshape(8, 9)[:, 1:]  # each row: filter byte, 8 gray pixels
            assert np.array_equal(pixels, expected[k, 0])
