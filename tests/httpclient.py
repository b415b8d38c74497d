"""`bns-export serve` (bns_export.serve) on a free loopback port in a background thread, and a small Open
Inference Protocol client for it (JSON and the binary tensor extension)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from contextlib import contextmanager

import numpy as np

DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


class Client:
    """infer(model, {name: array}) -> (status, {output: array} or {"error": ...}) over one HTTP connection each."""

    def __init__(self, port: int, models: dict) -> None:
        self.port, self.models = port, models

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def infer(self, model: str, inputs: dict, binary: bool = True, parameters: dict | None = None, timeout=60):
        entries, tail = [], []
        for name, value in inputs.items():
            a = np.ascontiguousarray(value)
            entry = {"name": name, "shape": list(a.shape), "datatype": DATATYPE[a.dtype]}
            if binary:
                entry["parameters"] = {"binary_data_size": a.nbytes}
                tail.append(a.tobytes())
            else:
                entry["data"] = a.reshape(-1).tolist()
            entries.append(entry)
        header = {"inputs": entries, "parameters": {"binary_data_output": binary, **(parameters or {})}}
        data = json.dumps(header).encode()
        headers = {"Content-Type": "application/octet-stream"}
        if binary:
            headers["Inference-Header-Content-Length"] = str(len(data))
        status, got, body = self.request("POST", f"/v2/models/{model}/infer", data + b"".join(tail), headers, timeout)
        return status, decode(got, body)


def decode(headers: dict, body: bytes) -> dict:
    """A response's outputs by name as arrays (or its JSON error)."""
    length = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    head = json.loads(body if length is None else body[: int(length)])
    if "outputs" not in head:
        return head
    out, offset = {}, 0 if length is None else int(length)
    for o in head["outputs"]:
        if "data" in o:
            out[o["name"]] = np.asarray(o["data"], np.float32).reshape(o["shape"])
        else:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(body[offset : offset + size], np.float32).reshape(o["shape"])
            offset += size
    return out


@contextmanager
def serving(*artifacts, **limits):
    """Serve the artifacts on a free port; yield a Client (its `models` hold the batchers)."""
    from bns_export.serve import Limits, load_models, make_app, server

    models = load_models([str(a) for a in artifacts])
    lim = Limits(**{"max_delay_ms": 50, **limits})
    srv = server(make_app(models, lim), "127.0.0.1", 0, lim)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield Client(port, models)
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
