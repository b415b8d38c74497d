"""A small HTTP service around `bns_export.runtime.load`, batching concurrent requests up to the artifact's
max batch: an example to copy, not a production server.

    python tools/serve_http.py exported/demo/onnx-bns-8 --port 8080
    curl -s localhost:8080/health
    curl -s -X POST localhost:8080/sample -d '{"seed": 7}'              # one sample from seeded noise
    curl -s -X POST localhost:8080/sample -d '{"noise": [[[...]]], "label": 3}'

Each request asks for one sample (its own noise, or a seed); a worker thread takes whatever requests
are waiting (up to max_batch, after at most --max-delay-ms), runs them as one batch and answers each.
Bad requests get HTTP 400 with {"error": one line}.  Needs numpy + onnxruntime only, for ONNX artifacts.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bns_export.errors import BNSError  # noqa: E402
from bns_export.runtime import load  # noqa: E402

MAX_BODY = 16 << 20


class Batcher:
    """Collects single-sample requests and runs them through the runner in batches."""

    def __init__(self, runner, max_delay_s: float = 0.005) -> None:
        self.runner, self.max_delay_s = runner, max_delay_s
        self.requests: queue.Queue = queue.Queue()
        self.batches = 0
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, noise: np.ndarray, label: int | None) -> Future:
        fut: Future = Future()
        self.requests.put((noise, label, fut))
        return fut

    def _work(self) -> None:
        while True:
            items = [self.requests.get()]
            try:
                while len(items) < self.runner.max_batch:
                    items.append(self.requests.get(timeout=self.max_delay_s))
            except queue.Empty:
                pass
            noise = np.stack([n for n, _, _ in items]).astype(np.float32)
            labels = np.array([lab for _, lab, _ in items], np.int64) if self.runner.conditional else None
            try:
                out = self.runner(noise, labels)
                self.batches += 1
                for k, (_, _, fut) in enumerate(items):
                    fut.set_result(out[k])
            except BNSError as e:
                for _, _, fut in items:
                    fut.set_exception(e)


def make_server(artifact: str, host: str = "127.0.0.1", port: int = 0, max_delay_ms: float = 5.0):
    """The HTTP server (not started) and its batcher."""
    runner = load(artifact)
    batcher = Batcher(runner, max_delay_ms / 1000)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path != "/health":
                return self._send(404, {"error": "unknown path"})
            m = runner.manifest
            self._send(200, {"nfe": m["nfe"], "sample_shape": m["sample_shape"], "max_batch": m["max_batch"]})

        def do_POST(self) -> None:
            if self.path != "/sample":
                return self._send(404, {"error": "unknown path"})
            try:
                size = int(self.headers.get("Content-Length", "0"))
                if not 0 < size <= MAX_BODY:
                    raise BNSError(f"request body must be 1..{MAX_BODY} bytes")
                req = json.loads(self.rfile.read(size))
                if not isinstance(req, dict):
                    raise BNSError("request must be a JSON object")
                if "noise" in req:
                    noise = np.asarray(req["noise"], dtype=np.float32)
                else:
                    seed = req.get("seed", 0)
                    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                        raise BNSError("seed must be a whole number in 0..2^63-1")
                    noise = np.random.default_rng(seed).standard_normal(runner.sample_shape).astype(np.float32)
                label = req.get("label", -1 if runner.conditional else None)
                runner.check_inputs(noise[None], None if label is None else np.array([label]))
                sample = batcher.submit(noise, label).result(timeout=60)
            except (BNSError, ValueError, TypeError) as e:
                return self._send(400, {"error": str(e).splitlines()[0] if str(e) else type(e).__name__})
            self._send(200, {runner.output_names[-1]: sample.tolist()})

    return ThreadingHTTPServer((host, port), Handler), batcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    args = ap.parse_args()
    server, _ = make_server(args.artifact, args.host, args.port, args.max_delay_ms)
    print(f"serving {args.artifact} on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
