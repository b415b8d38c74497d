"""`bns-export serve`: artifacts behind the Open Inference Protocol (KServe v2) on Starlette and uvicorn.

Endpoints: /v2/health/live and /ready, /v2 (server metadata), /v2/models/NAME[/versions/V] (model
metadata) and its /ready, and POST /v2/models/NAME[/versions/V]/infer with named input tensors as JSON
`data` or with the binary tensor extension (`Inference-Header-Content-Length`), so Triton's and KServe's
own clients (`tritonclient.http`) work unchanged.  Every input is checked with the runtime's checks
(`Runner.check_inputs`, `check_guidance`) before anything is queued; a declared shape is checked against
the body before any array is built; an input or field the artifact does not take is a 400.  Concurrent
requests are batched per sample size (up to the artifact's max batch, after at most the batch delay);
the queue is bounded (503 beyond it).  The limits (body size, header and body deadlines, queue,
concurrency) are `Limits`, checked at start-up; the header deadline closes connections whose request
headers do not arrive in time (a slow client cannot hold a slot).  Needs the `serve` extra (starlette,
uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import TensorSpec
from .errors import EXIT_MISSING_BACKEND, BNSError

#: the manifest's dtypes as the protocol names them, and back
DATATYPES = {"float32": "FP32", "int64": "INT64"}
NUMPY = {"FP32": np.float32, "INT64": np.int64}
#: the header that says how long the JSON part of a binary-extension body is
HEADER_LENGTH = "inference-header-content-length"
#: request fields the protocol defines (anything else is a 400)
REQUEST_FIELDS = {"id", "inputs", "outputs", "parameters"}
INPUT_FIELDS = {"name", "shape", "datatype", "data", "parameters"}


class HTTPError(Exception):
    """A request the server refuses: its status code and one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


#: each limit's accepted range, the one home of the numbers `Limits` and `bns-export serve`'s options check
LIMIT_RANGES = {
    "max_body": (1024, 1 << 34),
    "header_timeout_s": (0.01, 3600),
    "body_timeout_s": (0.01, 3600),
    "max_delay_ms": (0, 10_000),
    "queue_per_slot": (1, 1 << 16),
    "infer_timeout_s": (0.01, 86_400),
    "concurrency": (1, 1 << 20),
}


@dataclass(frozen=True)
class Limits:
    """What one server accepts, checked when it starts (one line, exit 2, for a value out of range)."""

    max_body: int = 64 << 20  # bytes of one request body
    header_timeout_s: float = 10.0  # to send a request's headers, from the connection or the last response
    body_timeout_s: float = 30.0  # to send a request's body
    max_delay_ms: float = 5.0  # how long a request waits for others to share its batch
    queue_per_slot: int = 8  # requests queued per batch slot before new ones get 503
    infer_timeout_s: float = 600.0  # a queued request waits at most this for its batch
    concurrency: int = 1024  # connections and requests at once (uvicorn's limit_concurrency)

    def __post_init__(self) -> None:
        for key, (lo, hi) in LIMIT_RANGES.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
                raise BNSError(f"serve limit {key} must be a number in [{lo}, {hi}], got {value!r}")


@dataclass
class Model:
    """One served artifact: its name, version, runner and batcher."""

    name: str
    version: str
    runner: object
    batcher: Batcher = field(init=False)


# -- parsing ------------------------------------------------------------------------------------------------------


def _input_specs(runner) -> dict[str, TensorSpec]:
    """The artifact's graph inputs by name, from its signature."""
    return {spec.name: spec for spec in runner.signature.inputs}


def _v2_shape(spec: TensorSpec) -> list[int]:
    """A tensor's shape in the protocol's form: -1 for the batch and any size the graph leaves open."""
    return [d if isinstance(d, int) else -1 for d in spec.json_shape]


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of an infer request and its binary tail (the binary tensor extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise HTTPError(400, f"{HEADER_LENGTH} must be a whole number of bytes within the body")
        n = int(header_length)
        json_part, binary = body[:n], body[n:]
    try:
        header = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HTTPError(400, f"request is not JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise HTTPError(400, "request JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise HTTPError(400, "an infer request is a JSON object")
    unknown = sorted(set(header) - REQUEST_FIELDS)
    if unknown:
        raise HTTPError(400, f"unknown request field(s) {', '.join(unknown)}; the protocol's: {sorted(REQUEST_FIELDS)}")
    return header, binary


def _tensor(spec: TensorSpec, item: dict, binary: bytes, offset: int, limit: int) -> tuple[np.ndarray, int]:
    """One input tensor from its JSON entry (its `data`, or its bytes of the binary tail): shape and datatype
    checked against the artifact's before any array is built."""
    name = spec.name
    unknown = sorted(set(item) - INPUT_FIELDS)
    if unknown:
        raise HTTPError(400, f"input {name}: unknown field(s) {', '.join(unknown)}")
    want = DATATYPES[spec.dtype]
    if item.get("datatype") != want:
        raise HTTPError(400, f"input {name} is {want}, got datatype {item.get('datatype')!r}")
    shape = item.get("shape")
    rank = len(spec.json_shape)
    if (
        not isinstance(shape, list)
        or len(shape) != rank
        or not all(type(d) is int and 1 <= d <= 1 << 31 for d in shape)
    ):
        raise HTTPError(400, f"input {name}: shape must be {rank} whole numbers >= 1, got {shape!r}")
    count = math.prod(shape)
    nbytes = count * np.dtype(NUMPY[want]).itemsize
    if nbytes > limit:
        raise HTTPError(413, f"input {name}: shape {shape} is {nbytes} bytes, more than the body limit {limit}")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(400, f"input {name}: parameters must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if "data" in item or type(size) is not int or size != nbytes or offset + size > len(binary):
            raise HTTPError(400, f"input {name}: binary_data_size must be its {nbytes} bytes, sent after the JSON")
        array = np.frombuffer(binary, dtype=NUMPY[want], count=count, offset=offset).reshape(shape)
        return array, offset + size
    if "data" not in item:
        raise HTTPError(400, f"input {name}: give data, or binary_data_size with the binary extension")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the runtime's checks refuse
        raw = np.asarray(item["data"])
    if raw.dtype.kind not in ("f", "i", "u") or raw.size != count:
        raise HTTPError(
            400, f"input {name}: data must be {count} numbers (no booleans, strings or nested ragged lists)"
        )
    if want == "INT64" and raw.dtype.kind == "f":
        raise HTTPError(400, f"input {name} holds whole numbers (INT64), got fractions")
    with np.errstate(over="ignore", invalid="ignore"):
        return raw.astype(NUMPY[want]).reshape(shape), offset


def parse_infer(runner, header: dict, binary: bytes, limit: int) -> tuple[dict, list]:
    """The infer request's inputs by name, checked by the runtime's own checks, and the outputs it asks for."""
    specs = _input_specs(runner)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise HTTPError(400, f"inputs must be a list of tensors: {', '.join(specs)}")
    tensors, offset = {}, 0
    for item in inputs:
        name = item.get("name")
        if name not in specs:
            raise HTTPError(400, f"unknown input {name!r}: this model takes {', '.join(specs)}")
        if name in tensors:
            raise HTTPError(400, f"input {name} is given twice")
        tensors[name], offset = _tensor(specs[name], item, binary, offset, limit)
    if offset != len(binary):
        raise HTTPError(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [n for n in specs if n not in tensors]
    if missing:
        raise HTTPError(400, f"missing input(s) {', '.join(missing)}: this model takes {', '.join(specs)}")
    noise = tensors["noise"]
    cond = {n: tensors[n] for n in runner.condition_names} or None  # the graph's condition record
    try:
        noise, cond = runner.check_inputs(noise, cond)
        guidance = runner.check_guidance(tensors.get("guidance"), int(noise.shape[0]))
        table = runner.check_table(tensors.get("table"), int(noise.shape[0]))
    except BNSError as e:
        raise HTTPError(400, str(e)) from None
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") for o in outputs):
        raise HTTPError(400, "outputs must be a list of {name, parameters}")
    for o in outputs:
        if o["name"] not in runner.output_names:
            raise HTTPError(400, f"unknown output {o['name']!r}: this model gives {', '.join(runner.output_names)}")
        if not isinstance(o.get("parameters") or {}, dict):
            raise HTTPError(400, f"output {o['name']}: parameters must be an object")
    png_outputs(runner, header, outputs)  # a PNG asked of an output that is no image: a 400 now
    return {"noise": noise, "condition": cond, "guidance": guidance, "table": table}, outputs


def png_outputs(runner, header: dict, outputs: list) -> set[str]:
    """The outputs to send as PNG: each output asked for with `parameters.png` (an image, (C, H, W) with 1 or 3
    channels, or a 400), or with the request's `png` every image output it returns (at least one)."""
    params = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    names = [o["name"] for o in outputs] or list(runner.output_names)

    def image(name: str) -> bool:
        shape = runner.output_shapes[name][1:]
        return len(shape) == 3 and shape[0] in (1, 3)

    asked = {o["name"] for o in outputs if (o.get("parameters") or {}).get("png") is True}
    for name in asked:
        if not image(name):
            raise HTTPError(400, f"output {name} is not an image (C, H, W) with 1 or 3 channels: it has no PNG form")
    if params.get("png") is True:
        every = {n for n in names if image(n)}
        if not every:
            raise HTTPError(400, "png: none of the outputs asked for is an image (C, H, W) with 1 or 3 channels")
        asked |= every
    return asked


def png_bytes(images: np.ndarray) -> bytes:
    """A BYTES tensor of PNGs in the binary extension's form: each image's 4-byte little-endian length, then it."""
    from .images import encode_png, to_uint8

    out = []
    for image in images:
        data = encode_png(to_uint8(np.transpose(image, (1, 2, 0))))
        out.append(len(data).to_bytes(4, "little") + data)
    return b"".join(out)


def encode_outputs(
    model: Model, request_id, results: dict, outputs: list, binary_default: bool, png: set[str] = frozenset()
) -> tuple[dict, bytes]:
    """The infer response: every output asked for (all when none is), as JSON data or binary-extension bytes;
    those in `png` as a BYTES tensor of PNG images (data range [-1, 1] to 0..255), always binary."""
    wanted = outputs or [{"name": n} for n in model.runner.output_names]
    entries, tail = [], []
    for o in wanted:
        array = np.ascontiguousarray(results[o["name"]], dtype=np.float32)
        params = o.get("parameters") or {}
        if o["name"] in png:
            data = png_bytes(array)
            entry = {"name": o["name"], "datatype": "BYTES", "shape": [len(array)]}
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
            entries.append(entry)
            continue
        entry = {"name": o["name"], "datatype": "FP32", "shape": list(array.shape)}
        if params.get("binary_data", binary_default):
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body = {"model_name": model.name, "model_version": model.version, "outputs": entries}
    if request_id is not None:
        body["id"] = request_id
    return body, b"".join(tail)


# -- batching -----------------------------------------------------------------------------------------------------


class Batcher:
    """Queued requests run together up to the artifact's max batch, one batch per sample size; the queue is
    bounded and a failing batch fails only its requests."""

    def __init__(self, runner, limits: Limits) -> None:
        self.runner, self.limits = runner, limits
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=limits.queue_per_slot * runner.max_batch)
        self.batches = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, request: dict) -> dict:
        """The outputs of one checked request (its own batch rows)."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((request, future))
        except asyncio.QueueFull:
            raise HTTPError(503, "server busy: the queue is full") from None
        try:
            return await asyncio.wait_for(future, self.limits.infer_timeout_s)
        except TimeoutError:
            raise HTTPError(504, f"no batch ran this request within {self.limits.infer_timeout_s:g} s") from None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            rows = len(items[0][0]["noise"])
            deadline = loop.time() + self.limits.max_delay_ms / 1000
            while rows < self.runner.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                items.append(item)
                rows += len(item[0]["noise"])
            groups: dict[tuple, list] = {}
            for item in items:  # one batch per sample size (a --sizes artifact)
                groups.setdefault(tuple(item[0]["noise"].shape[1:]), []).append(item)
            for group in groups.values():
                while group:  # at most max_batch rows per run
                    take, count = [], 0
                    while group and count + len(group[0][0]["noise"]) <= self.runner.max_batch:
                        count += len(group[0][0]["noise"])
                        take.append(group.pop(0))
                    await loop.run_in_executor(None, self._run, take)

    def _run(self, items: list) -> None:
        """One batch: the requests' rows stacked, run once, split back."""
        answers = []
        try:
            reqs = [r for r, _ in items]
            noise = np.concatenate([r["noise"] for r in reqs])
            cond = None
            if reqs[0]["condition"] is not None:
                first = reqs[0]["condition"]
                if isinstance(first, dict):
                    cond = {k: np.concatenate([r["condition"][k] for r in reqs]) for k in first}
                else:
                    cond = np.concatenate([r["condition"] for r in reqs])
            guidance, table = (
                None if reqs[0][k] is None else np.concatenate([r[k] for r in reqs]) for k in ("guidance", "table")
            )  # a loop artifact's requests batch across tables: each sample runs its own
            out = self.runner.run(noise, cond, guidance, table)
            self.batches += 1
            start = 0
            for r, fut in items:
                n = len(r["noise"])
                answers.append((fut, {k: np.asarray(v)[start : start + n] for k, v in out.items()}, None))
                start += n
        except Exception as e:  # a failing batch fails its requests, never the server
            answers = [(fut, None, e) for _, fut in items]
        for fut, value, error in answers:
            fut.get_loop().call_soon_threadsafe(_settle, fut, value, error)


def _settle(fut: asyncio.Future, value, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


# -- the application ----------------------------------------------------------------------------------------------


def _starlette():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise BNSError(
            "bns-export serve needs starlette and uvicorn: pip install 'bns-export[serve]'", EXIT_MISSING_BACKEND
        ) from None


def load_models(artifacts: list[str], policy=None) -> dict[str, Model]:
    """Each artifact as a model named after its folder, version 1, opened under `policy` (runtime.OpenPolicy:
    signatures, engine code); two folders of one name are one line."""
    from .runtime import OpenPolicy, load

    policy = policy or OpenPolicy.resolve()
    models: dict[str, Model] = {}
    for path in artifacts:
        name = Path(path).resolve().name
        if name in models:
            raise BNSError(f"two artifacts are named {name}: serve folders with different names")
        runner = load(path, public_key=policy.public_key, require_signature=policy.require_signature,
                      trust_engine_code=policy.trust_engine_code)  # fmt: skip
        models[name] = Model(name, "1", runner)
    return models


def model_metadata(model: Model) -> dict:
    """The protocol's model metadata: inputs and outputs with datatypes and shapes (-1: batch and open sizes)."""
    m = model.runner.manifest
    rng = None if m.guidance_range is None else list(m.guidance_range)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": f"bns-export/{m.format}",
        "inputs": [{"name": s.name, "datatype": DATATYPES[s.dtype], "shape": _v2_shape(s)} for s in m.signature.inputs],
        "outputs": [
            {"name": s.name, "datatype": DATATYPES[s.dtype], "shape": _v2_shape(s)} for s in m.signature.outputs
        ],
        "parameters": {
            "nfe": m.nfe,
            "max_batch": m.max_batch,
            "guidance_range": rng,
            "tables": [f"{i} {e.name} (NFE {e.nfe})" for i, e in enumerate(m.tables)] or None,
        },
    }


def make_app(models: dict[str, Model], limits: Limits):
    """The ASGI application serving `models` (a Starlette app; its lifespan starts and stops the batchers)."""
    _starlette()
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from . import __version__

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for model in models.values():
            model.batcher = Batcher(model.runner, limits)
            model.batcher.start()
        yield
        for model in models.values():
            model.batcher.task.cancel()

    def error(code: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=code)

    def lookup(request: Request) -> Model:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = models.get(name)
        if model is None:
            raise HTTPError(404, f"unknown model {name!r}; serving {', '.join(models)}")
        if version is not None and version != model.version:
            raise HTTPError(404, f"model {name} has version {model.version}, not {version!r}")
        return model

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = all(m.batcher.alive for m in models.values())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "bns-export", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def metadata(request: Request) -> Response:
        try:
            return JSONResponse(model_metadata(lookup(request)))
        except HTTPError as e:
            return error(e.code, str(e))

    async def model_ready(request: Request) -> Response:
        try:
            ok = lookup(request).batcher.alive
        except HTTPError as e:
            return error(e.code, str(e))
        return JSONResponse({"name": request.path_params["name"], "ready": ok}, status_code=200 if ok else 503)

    async def read_body(request: Request) -> bytes:
        """The body, at most max_body bytes, arriving within body_timeout_s in all."""
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > limits.max_body:  # h11 has checked it is one whole number
            raise HTTPError(413, f"request body must be at most {limits.max_body} bytes")
        chunks, got = [], 0

        async def receive() -> None:
            nonlocal got
            async for chunk in request.stream():
                got += len(chunk)
                if got > limits.max_body:
                    raise HTTPError(413, f"request body must be at most {limits.max_body} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(receive(), limits.body_timeout_s)
        except TimeoutError:
            raise HTTPError(408, f"request body not received within {limits.body_timeout_s:g} s") from None
        return b"".join(chunks)

    async def infer(request: Request) -> Response:
        try:
            model = lookup(request)
            header, binary = split_body(await read_body(request), request.headers.get(HEADER_LENGTH))
            parsed, outputs = parse_infer(model.runner, header, binary, limits.max_body)
            if not model.batcher.alive:
                raise HTTPError(503, "the batcher has stopped")
            results = await model.batcher.submit(parsed)
            params = header.get("parameters") or {}
            binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
            png = png_outputs(model.runner, header, outputs)
            body, tail = encode_outputs(model, header.get("id"), results, outputs, binary_default, png)
        except HTTPError as e:
            return error(e.code, str(e))
        except (BNSError, ValueError, TypeError) as e:
            return error(400, (str(e).splitlines() or [type(e).__name__])[0][:300])
        except Exception as e:  # a model's own failure: 500 with one line, the server goes on
            return error(500, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        if not tail:
            return JSONResponse(body)
        data = json.dumps(body).encode()
        return Response(
            data + tail,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(data))},
        )

    model_paths = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        *[Route(p, metadata) for p in model_paths],
        *[Route(p + "/ready", model_ready) for p in model_paths],
        *[Route(p + "/infer", infer, methods=["POST"]) for p in model_paths],
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def server(app, host: str, port: int, limits: Limits):
    """A uvicorn server for `app` whose connections close when request headers miss the header deadline."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Deadlined(H11Protocol):
        """uvicorn's h11 protocol with a header deadline: armed on connecting and after each response, it closes
        the connection unless a request's headers have arrived (a request is running) by then."""

        def _arm(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_deadline)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _header_deadline(self) -> None:
            running = self.cycle is not None and not self.cycle.response_complete
            if not running and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

    if not 0 <= port <= 65535:
        raise BNSError(f"--port {port} is not a TCP port (0..65535)")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=Deadlined,
        limit_concurrency=limits.concurrency,
        timeout_keep_alive=max(1, int(limits.header_timeout_s)),
        log_level="warning",
        lifespan="on",
    )
    return uvicorn.Server(config)
