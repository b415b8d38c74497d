"""A small HTTP service around `bns_export.runtime.load`, batching concurrent requests up to the artifact's
max batch: a service to put behind a load balancer, and an example to copy.

    python tools/serve_http.py exported/demo/onnx-bns-8 --port 8080
    curl -s localhost:8080/health
    curl -s -X POST localhost:8080/sample -d '{"seed": 7}'              # one sample from seeded noise
    curl -s -X POST localhost:8080/sample -d '{"noise": [[[...]]], "label": 3}'
    curl -s -X POST localhost:8080/sample -d '{"seed": 7, "cond": [[...]]}'   # tensor-conditioned artifacts
    curl -s -X POST localhost:8080/sample -d '{"seed": 7, "cond": {"encoder_hidden_states": [[...]], ...}}'  # named
    curl -s -X POST localhost:8080/sample -d '{"seed": 7, "label": 3, "guidance": 4.5}'   # a guidance-family artifact
    curl -s -X POST localhost:8080/sample -d '{"seed": 7, "size": [96, 64], "cond": [[...]]}'  # compiled with --sizes

Each request asks for one sample (its own noise, or a seed); a worker thread takes whatever requests
are waiting (up to max_batch, after at most --max-delay-ms), runs them as one batch per sample size and
answers each.
Bounded everywhere: request bodies (--max-body bytes), the time to send one (--request-timeout s),
connections handled at once (a pool of --workers threads, default 4 x max batch; more are answered
503), the listen backlog (--backlog).  /health answers 503 once the batcher has stopped.  Every bad
request gets a 4xx with {"error": one line}.  Needs numpy + onnxruntime only, for ONNX artifacts.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bns_export.errors import BNSError  # noqa: E402
from bns_export.runtime import load  # noqa: E402

MAX_BODY = 16 << 20
SAMPLE_TIMEOUT_S = 60.0


class HTTPError(Exception):
    """A request the service refuses: its status code and one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Batcher:
    """Collects single-sample requests and runs them through the runner in batches; never dies on a bad batch."""

    def __init__(self, runner, max_delay_s: float = 0.005) -> None:
        self.runner, self.max_delay_s = runner, max_delay_s
        self.requests: queue.Queue = queue.Queue()
        self.batches = 0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, noise: np.ndarray, cond, guidance: float | None = None) -> Future:
        fut: Future = Future()
        self.requests.put((noise, cond, guidance, fut))
        return fut

    def _work(self) -> None:
        while True:
            items = [self.requests.get()]
            try:
                while len(items) < self.runner.max_batch:
                    items.append(self.requests.get(timeout=self.max_delay_s))
            except queue.Empty:
                pass
            groups: dict[tuple, list] = {}  # an artifact with several sizes: one batch per size
            for item in items:
                groups.setdefault(item[0].shape, []).append(item)
            for group in groups.values():
                self._run(group)

    def _run(self, items: list) -> None:
        """One batch of same-shaped requests; a failure fails only its requests."""
        try:
            noise = np.stack([n for n, _, _, _ in items]).astype(np.float32)
            cond = None
            if self.runner.named_conditions:  # {name: one sample's array} per request -> {name: batch}
                cond = {k: np.stack([c[k] for _, c, _, _ in items]) for k in self.runner.condition_names}
            elif self.runner.conditional:
                cond = np.stack([np.asarray(c, dtype=self.runner.condition_dtype) for _, c, _, _ in items])
            # a guidance family: each request's own scale, one batch
            guidance = None if self.runner.guidance_range is None else np.array([g for _, _, g, _ in items])
            out = self.runner(noise, cond, guidance)
            self.batches += 1
            for k, (_, _, _, fut) in enumerate(items):
                fut.set_result(out[k])
        except Exception as e:  # one bad batch fails its requests, never the service
            for _, _, _, fut in items:
                if not fut.done():
                    fut.set_exception(e)


def parse_request(runner, req) -> tuple[np.ndarray, object, float | None]:
    """One request's noise, condition and (a guidance-family artifact's) guidance, checked against the artifact
    (HTTPError 400 otherwise)."""
    if not isinstance(req, dict):
        raise HTTPError(400, "request must be a JSON object")
    unknown = sorted(set(req) - {"noise", "seed", "size", "label", "cond", "guidance"})
    if unknown:
        raise HTTPError(
            400, f"unknown field(s) {', '.join(unknown)}; use noise or seed (and size), label or cond, and guidance"
        )
    noise, cond = _sample_inputs(runner, req)
    guidance = req.get("guidance")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))):
        raise HTTPError(400, "guidance must be a number")
    runner.check_guidance(None if guidance is None else np.array([guidance], np.float32), 1)  # range: a 400
    return noise, cond, None if guidance is None else float(guidance)


def _sample_inputs(runner, req: dict) -> tuple[np.ndarray, object]:
    """A request's noise and condition, checked against the artifact."""
    if "noise" in req:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, which check_inputs refuses
            noise = np.asarray(req["noise"], dtype=np.float32)  # ValueError / TypeError for non-numbers: a 400
    else:
        seed = req.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise HTTPError(400, "seed must be a whole number in 0..2^63-1")
        noise = np.random.default_rng(seed).standard_normal(_seeded_shape(runner, req)).astype(np.float32)
    cond = None
    if runner.named_conditions:
        names = runner.condition_names
        if not isinstance(req.get("cond"), dict):
            raise HTTPError(400, f"this artifact needs cond, an object with {', '.join(names)}")
        with np.errstate(over="ignore"):
            cond = {k: np.asarray(v, dtype=np.float32)[None] for k, v in req["cond"].items()}
        runner.check_inputs(noise[None], cond)
        return noise, {k: v[0] for k, v in cond.items()}
    if runner.condition_name == "labels":
        label = req.get("label", -1)
        if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < runner.num_classes:
            raise HTTPError(400, f"label must be a whole number in 0..{runner.num_classes - 1} (or -1: unconditional)")
        cond = np.array([label], np.int64)
    elif runner.condition_name == "cond":
        if "cond" not in req:
            raise HTTPError(400, f"this artifact needs cond, an array of shape {list(runner.cond_shape)}")
        with np.errstate(over="ignore"):
            cond = np.asarray(req["cond"], dtype=np.float32)[None]
    elif "label" in req or "cond" in req:
        raise HTTPError(400, "this artifact is unconditional: send no label or cond")
    runner.check_inputs(noise[None], cond)
    return noise, None if cond is None else cond[0]


def _seeded_shape(runner, req: dict) -> tuple[int, ...]:
    """The shape of a seeded request's noise: the artifact's sample shape, at `size` [H, W] if given."""
    size = req.get("size")
    if size is None:
        return runner.sample_shape
    if not isinstance(size, list) or len(size) != 2 or not all(type(v) is int and 1 <= v <= 1 << 14 for v in size):
        raise HTTPError(400, "size must be [H, W], two whole numbers (sample units)")
    return (*runner.sample_shape[:-2], *size)  # check_inputs then says whether the artifact takes it


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bounded worker pool (overflow answered 503) and a deep listen backlog."""

    daemon_threads = True

    def __init__(self, address, handler, workers: int, backlog: int) -> None:
        self.request_queue_size = backlog
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="bns-http")
        self.slots = threading.BoundedSemaphore(2 * workers)  # running + waiting for a worker

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                body = b'{"error": "server busy: too many connections"}'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def handle_error(self, request, client_address) -> None:  # quiet: a dropped client is not an error
        pass

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(
    artifact: str,
    host: str = "127.0.0.1",
    port: int = 0,
    max_delay_ms: float = 5.0,
    workers: int | None = None,
    backlog: int = 1024,
    request_timeout_s: float = 10.0,
    max_body: int = MAX_BODY,
):
    """The HTTP server (not started) and its batcher."""
    runner = load(artifact)
    batcher = Batcher(runner, max_delay_ms / 1000)
    workers = workers or max(8, 4 * runner.max_batch)

    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout_s  # a socket read that waits longer closes the connection
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def log_message(self, *args) -> None:  # quiet
            pass

        def send_error(self, code, message=None, explain=None) -> None:  # malformed request lines: JSON too
            try:
                self._send(code, {"error": str(message or code).splitlines()[0][:200]})
            except OSError:
                pass

        def do_GET(self) -> None:
            if self.path != "/health":
                return self._send(404, {"error": "unknown path"})
            m = runner.manifest
            body = {"nfe": m["nfe"], "sample_shape": m["sample_shape"], "max_batch": m["max_batch"]}
            if m.get("guidance_range") is not None:
                body["guidance_range"] = m["guidance_range"]
            if not batcher.alive:
                return self._send(503, {**body, "error": "the batcher has stopped"})
            self._send(200, {**body, "queued": batcher.requests.qsize()})

        def _body(self) -> bytes:
            """The request body, at most max_body bytes, sent within request_timeout_s in all."""
            try:
                size = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise HTTPError(411, "a Content-Length header (a whole number) is required") from None
            if size <= 0:
                raise HTTPError(400, "the request body is empty")
            if size > max_body:
                raise HTTPError(413, f"request body must be at most {max_body} bytes")
            deadline, chunks, got = time.monotonic() + request_timeout_s, [], 0
            while got < size:
                if time.monotonic() > deadline:
                    raise HTTPError(408, f"request body not received within {request_timeout_s:g} s")
                chunk = self.rfile.read1(min(size - got, 1 << 16))
                if not chunk:
                    raise HTTPError(400, "request body shorter than its Content-Length")
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        def do_POST(self) -> None:
            try:
                if self.path != "/sample":
                    raise HTTPError(404, "unknown path")
                try:
                    req = json.loads(self._body())
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise HTTPError(400, f"request is not JSON ({str(e).splitlines()[0][:120]})") from None
                except RecursionError:
                    raise HTTPError(400, "request JSON is nested too deeply") from None
                noise, cond, guidance = parse_request(runner, req)
                if not batcher.alive:
                    raise HTTPError(503, "the batcher has stopped")
                sample = batcher.submit(noise, cond, guidance).result(timeout=SAMPLE_TIMEOUT_S)
            except HTTPError as e:
                return self._send(e.code, {"error": str(e)})
            except TimeoutError:
                return self._send(408, {"error": "request timed out"})
            except (BNSError, ValueError, TypeError, OverflowError) as e:
                return self._send(400, {"error": (str(e).splitlines() or [type(e).__name__])[0][:300]})
            except Exception as e:
                return self._send(500, {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"})
            self._send(200, {runner.output_names[-1]: np.asarray(sample).tolist()})

    return Server((host, port), Handler, workers, backlog), batcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=None, help="Connections handled at once (default 4 x max batch).")
    ap.add_argument("--backlog", type=int, default=1024, help="Listen backlog.")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="Seconds a client has to send a request.")
    ap.add_argument("--max-body", type=int, default=MAX_BODY, help="Largest request body in bytes.")
    args = ap.parse_args()
    try:
        server, _ = make_server(
            args.artifact, args.host, args.port, args.max_delay_ms, args.workers, args.backlog, args.request_timeout,
            args.max_body,
        )  # fmt: skip
    except BNSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(f"serving {args.artifact} on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
