"""The example HTTP service (tools/serve_http.py) on a free port, and a JSON client for its /sample."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))


@contextmanager
def serving(artifact):
    """Serve `artifact`; yield (post, batcher): post(body) -> (status, answer)."""
    from serve_http import make_server

    srv, batcher = make_server(str(artifact), port=0, max_delay_ms=50)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/sample"

    def post(body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        yield post, batcher
    finally:
        srv.shutdown()
