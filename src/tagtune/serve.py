"""HTTP serving of a tagger: ``POST /v1/extract``, ``GET /health``, ``GET /openapi.json`` and a page at ``/``.

Requests that arrive together are micro-batched: they wait in a queue for at most ``batch_wait``
seconds (a few ms) and run as one ``Tagger.predict`` call in a single worker thread, so the model
never runs twice at once and the event loop keeps answering. Offsets in responses are Python
``str`` indices (Unicode code points) into each text as sent.

Needs the ``serve`` extra (uvicorn, starlette).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tagtune.errors import TagtuneError

log = logging.getLogger("tagtune.serve")

ENTITY_PREFIXES = ("B-", "I-", "E-", "S-", "L-", "U-")


@dataclass
class Limits:
    """What one request may carry; beyond these the answer is 413."""

    max_texts: int = 128
    """Texts in one request."""
    max_chars: int = 10_000
    """Characters (code points) in one text."""
    max_total_chars: int = 100_000
    """Characters in all texts of one request together."""
    max_body: int = 1_048_576
    """Bytes of the request body."""

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise TagtuneError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def entity_labels(tags: list[str]) -> list[str]:
    """Entity labels of a model's tags, in order of first appearance: B-person, I-person -> person."""
    out: list[str] = []
    for tag in tags:
        if tag == "O":
            continue
        label = tag[2:] if tag.startswith(ENTITY_PREFIXES) else tag
        if label not in out:
            out.append(label)
    return out


class Batcher:
    """Queues requests' texts and runs them, several requests at a time, as one ``predict`` call.

    A batch starts with the oldest waiting request and takes more while they fit in
    ``batch_texts`` texts and ``batch_chars`` characters, waiting at most ``batch_wait`` seconds
    after the first one arrived. A request larger than the budget runs alone.
    """

    def __init__(self, predict, batch_texts: int = 256, batch_chars: int = 100_000, batch_wait: float = 0.005):
        self.predict = predict
        self.batch_texts = batch_texts
        self.batch_chars = batch_chars
        self.batch_wait = batch_wait
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagtune-model")
        self.requests_per_batch: Counter = Counter()
        self.texts_per_batch: Counter = Counter()
        self.failures = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> list:
        """Spans for ``texts``, predicted in a batch shared with other waiting requests."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((texts, future, time.monotonic()))
        return await future

    def stats(self) -> dict:
        batches = sum(self.requests_per_batch.values())
        return {
            "batches": batches,
            "requests": sum(k * n for k, n in self.requests_per_batch.items()),
            "texts": sum(k * n for k, n in self.texts_per_batch.items()),
            "max_requests_per_batch": max(self.requests_per_batch, default=0),
            "requests_per_batch": {str(k): n for k, n in sorted(self.requests_per_batch.items())},
            "texts_per_batch": {str(k): n for k, n in sorted(self.texts_per_batch.items())},
            "failed_batches": self.failures,
        }

    async def _run(self) -> None:
        held = None  # a request taken from the queue that did not fit in the last batch
        while True:
            first = held if held is not None else await self.queue.get()
            held = None
            batch = [first]
            n_texts, n_chars = len(first[0]), sum(map(len, first[0]))
            deadline = first[2] + self.batch_wait
            while True:
                if self.queue.empty():
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), wait)
                    except asyncio.TimeoutError:
                        break
                else:
                    item = self.queue.get_nowait()
                chars = sum(map(len, item[0]))
                if n_texts + len(item[0]) > self.batch_texts or n_chars + chars > self.batch_chars:
                    held = item
                    break
                batch.append(item)
                n_texts += len(item[0])
                n_chars += chars
            await self._predict(batch)

    async def _predict(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for item in batch for text in item[0]]
        self.requests_per_batch[len(batch)] += 1
        self.texts_per_batch[len(texts)] += 1
        try:
            spans = await loop.run_in_executor(self.executor, self.predict, texts)
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer, never a dead server
            if len(batch) > 1:  # find the request that fails: the others still get their spans
                self.requests_per_batch[len(batch)] -= 1
                self.texts_per_batch[len(texts)] -= 1
                for item in batch:
                    await self._predict([item])
                return
            self.failures += 1
            log.exception("prediction failed")
            _resolve(batch[0][1], error=e)
            return
        lo = 0
        for item_texts, future, _ in batch:
            _resolve(future, spans[lo:lo + len(item_texts)])
            lo += len(item_texts)


def _resolve(future: asyncio.Future, result=None, error: Exception | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def parse_request(body: bytes, limits: Limits) -> list[str]:
    """The texts of an extract request, or ApiError 400 (not JSON), 422 (wrong shape), 413 (too large)."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f'expected a JSON object {{"texts": [...]}}, got {_json_type(data)}')
    unknown = sorted(set(data) - {"texts"})
    if unknown:
        raise ApiError(422, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            'the request is {"texts": [...]}')
    if "texts" not in data:
        raise ApiError(422, 'missing field "texts" (a list of strings)')
    texts = data["texts"]
    if not isinstance(texts, list):
        raise ApiError(422, f'"texts" must be a list of strings, got {_json_type(texts)}')
    if len(texts) > limits.max_texts:
        raise ApiError(413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
    total = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, f"texts[{i}] must be a string, got {_json_type(text)}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, f"texts[{i}] contains an unpaired surrogate (\\ud800-\\udfff); "
                                "it is not valid Unicode") from None
        if len(text) > limits.max_chars:
            raise ApiError(413, f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars} per text")
        total += len(text)
    if total > limits.max_total_chars:
        raise ApiError(413, f"{total} characters in all texts; the limit is {limits.max_total_chars} per request")
    return texts


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


async def read_body(request, limit: int) -> bytes:
    """The request body, or ApiError 413 as soon as it is known to pass ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise ApiError(413, f"the body has {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body has more than {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def openapi_schema(labels: list[str], limits: Limits) -> dict:
    """The OpenAPI 3 description of the endpoints."""
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    def err(description):
        return dict(error, description=description)

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tagtune",
            "version": _version(),
            "description": "Character spans from a fine-tuned token tagger. Offsets are Python str indices "
                           "(Unicode code points) into each text as sent; in JavaScript, index "
                           "Array.from(text), not the UTF-16 string, when a text has characters outside "
                           "the Basic Multilingual Plane (emoji).",
        },
        "paths": {
            "/v1/extract": {
                "post": {
                    "summary": "Spans for each text, in order",
                    "operationId": "extract",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ExtractRequest"},
                        "example": {"texts": ["Barack Obama visited Lisbon"]}}}},
                    "responses": {
                        "200": {"description": "One result per text, in the order of the texts",
                                "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/ExtractResponse"}}}},
                        "400": err("The body is not valid JSON (or not UTF-8)"),
                        "413": err(f"Too large: more than {limits.max_body} bytes, {limits.max_texts} texts, "
                                   f"{limits.max_chars} characters in a text or {limits.max_total_chars} in all"),
                        "422": err('Not {"texts": [strings]}: a missing or unknown field, or a wrong type'),
                        "500": err("Prediction failed; the server keeps serving"),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Status, model and batching counters",
                    "operationId": "health",
                    "responses": {"200": {"description": "The server is up with its model loaded",
                                          "content": {"application/json": {
                                              "schema": {"$ref": "#/components/schemas/Health"}}}}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3 document",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "A page to try the tagger in a browser",
                    "operationId": "page",
                    "responses": {"200": {"description": "HTML page",
                                          "content": {"text/html": {"schema": {"type": "string"}}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "ExtractRequest": {
                    "type": "object",
                    "required": ["texts"],
                    "additionalProperties": False,
                    "properties": {"texts": {"type": "array", "maxItems": limits.max_texts,
                                             "items": {"type": "string", "maxLength": limits.max_chars}}},
                },
                "Span": {
                    "type": "object",
                    "required": ["start", "end", "label", "text"],
                    "properties": {
                        "start": {"type": "integer", "minimum": 0,
                                  "description": "First character, a code point index into the text"},
                        "end": {"type": "integer", "minimum": 1, "description": "One past the last character"},
                        "label": {"type": "string", "enum": labels} if labels else {"type": "string"},
                        "text": {"type": "string", "description": "text[start:end]"},
                        "score": {"type": "number", "minimum": 0, "maximum": 1,
                                  "description": "Mean probability of the span's tags"},
                    },
                },
                "ExtractResponse": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {"results": {"type": "array", "items": {
                        "type": "object", "required": ["spans"],
                        "properties": {"spans": {"type": "array",
                                                 "items": {"$ref": "#/components/schemas/Span"}}}}}},
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "model", "labels", "tags", "limits", "batching"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "model": {"type": "string", "description": "Name of the tagger folder"},
                        "labels": {"type": "array", "items": {"type": "string"},
                                   "description": "Entity labels the spans can carry"},
                        "tags": {"type": "array", "items": {"type": "string"},
                                 "description": "The model's tags (O, B-..., I-...)"},
                        "device": {"type": "string"},
                        "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "batching": {"type": "object", "description": "Counters of micro-batches since start"},
                    },
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }


def _version() -> str:
    from tagtune import __version__

    return __version__


def page_html() -> str:
    """The page at ``/``: one HTML file with inline CSS and JavaScript."""
    return resources.files("tagtune").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(tagger, name: str = "tagger", limits: Limits | None = None, batch_texts: int = 256,
               batch_wait: float = 0.005):
    """The Starlette app serving ``tagger`` (anything with ``predict(texts)`` and ``labels``)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    limits = limits or Limits()
    limits.check()
    batcher = Batcher(tagger.predict, batch_texts=batch_texts, batch_chars=limits.max_total_chars,
                      batch_wait=batch_wait)
    labels = entity_labels(list(tagger.labels))
    schema = openapi_schema(labels, limits)
    page = page_html()

    async def extract(request: Request):
        try:
            texts = parse_request(await read_body(request, limits.max_body), limits)
        except ApiError as e:
            return JSONResponse({"error": e.message}, status_code=e.status)
        if not texts:
            return JSONResponse({"results": []})
        try:
            spans = await batcher.submit(texts)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"error": f"prediction failed: {type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse({"results": [{"spans": [s.to_dict(text) for s in row]}
                                         for text, row in zip(texts, spans)]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": name, "labels": labels, "tags": list(tagger.labels),
                             "device": str(getattr(tagger, "device", "")), "limits": asdict(limits),
                             "batching": batcher.stats()})

    async def openapi(request: Request):
        return JSONResponse(schema)

    async def index(request: Request):
        return HTMLResponse(page)

    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/v1/extract", extract, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line TagtuneError (port in use, unknown host)."""
    if not 0 <= port <= 65535:
        raise TagtuneError(f"port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TagtuneError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise TagtuneError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(model_dir, host: str = "127.0.0.1", port: int = 8080, limits: Limits | None = None,
          device: str | None = None, batch_texts: int = 256, batch_wait: float = 0.005,
          access_log: bool = False) -> None:
    """Load the tagger, open the port, serve until interrupted. Prints the address once listening."""
    import sys

    try:
        import uvicorn
        import starlette  # noqa: F401
    except ImportError:
        raise TagtuneError("serving needs uvicorn and starlette: pip install 'tagtune[serve]'") from None
    from tagtune.tagger import Tagger

    limits = limits or Limits()
    limits.check()
    if batch_texts < 1:
        raise TagtuneError(f"batch-texts must be positive, got {batch_texts}")
    if batch_wait < 0:
        raise TagtuneError(f"batch wait must not be negative, got {batch_wait}")
    tagger = Tagger.load(model_dir, device=device)
    app = create_app(tagger, Path(model_dir).resolve().name, limits, batch_texts, batch_wait)
    sock = bind(host, port)
    shown_host, shown_port = sock.getsockname()[:2]
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    print(f"tagtune: serving {model_dir} on http://{shown_host}:{shown_port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
