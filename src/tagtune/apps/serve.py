"""HTTP serving of a tagger: ``POST /v1/extract``, ``GET /health``, ``GET /openapi.json`` and a page at ``/``.

Requests that arrive together are micro-batched: they wait in a queue for at most ``batch_wait``
seconds (a few ms) and run as one ``Tagger.predict`` call in a single worker thread, so the model
never runs twice at once and the event loop keeps answering. At most ``max_queue`` texts wait
(beyond, 503 at once with Retry-After) and a request not answered within ``timeout`` seconds gets
503; a request whose client disconnects or times out leaves the queue, so the model never runs its
texts unless their batch had started. Offsets in responses are Python ``str`` indices (Unicode
code points) into each text as sent. A span's ``score`` is its probability (tagtune.data.decode); spans
scoring below the request's ``min_score``, or the server's when the request has none, are left out.

A span tagger (``--head span``) gives spans that may nest or overlap: a request's ``overlap``
("nested", the default, "flat" or "any", as ``tagtune predict --overlap``) says which it keeps, and
its ``min_score`` is the least score of a span the decoding considers. Requests asking for other
decodings never share a batch. A token tagger's spans never overlap: "nested" and "flat" give the
same spans, "any" is refused (422).

The API needs no token and changes no state on the server. Listening on a loopback address (the
default), the server answers only requests whose ``Host`` is a loopback name or address
(localhost, 127.0.0.1, [::1]): a web page whose owner points its own name at 127.0.0.1 (DNS
rebinding) would otherwise read the answers as its own; it gets 403.

Needs the ``serve`` extra (uvicorn, starlette).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tagtune.apps._http import (ApiError, excerpt, Refusing, _version, bind, client_gone, entity_labels,
                                error_handlers, loopback, loopback_hosts, page_html, read_body,
                                require_server_packages, run_app)
from tagtune.data.decode import check_min_score
from tagtune.data.spandecode import OVERLAPS
from tagtune.errors import TagtuneError
from tagtune.inference.spantagger import SpanTagger
from tagtune.inference.tagger import Tagger
from tagtune.models.precision import check_bf16

log = logging.getLogger("tagtune.apps.serve")


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


class QueueFull(Exception):
    """The queue holds ``max_queue`` texts already: answer 503 with ``Retry-After: retry_after``."""

    def __init__(self, waiting: int, limit: int, retry_after: int):
        super().__init__(f"the queue is full: {waiting} texts are waiting (the limit is {limit}); "
                         f"retry after {retry_after} s")
        self.retry_after = retry_after


class TimedOut(Exception):
    """No answer within the timeout."""


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class Stopping(Exception):
    """The server stopped before the request's batch ran."""


class Pending:
    """One request's texts in the queue, and the future its answer arrives on."""

    __slots__ = ("texts", "chars", "future", "arrived", "options")

    def __init__(self, texts: list[str], future: asyncio.Future, options: tuple = ()):
        self.texts = texts
        self.options = options
        self.chars = sum(map(len, texts))
        self.future = future
        self.arrived = time.monotonic()


class Batcher:
    """Queues requests' texts and runs them, several requests at a time, as one ``predict`` call.

    A batch starts with the oldest waiting request and takes more, in order, while they fit in
    ``batch_texts`` texts and ``batch_chars`` characters, waiting at most ``batch_wait`` seconds
    after the first one arrived. A request larger than the budget runs alone. Each request carries
    the ``options`` its texts are predicted with, ``predict(texts, *options)``: only requests with
    the oldest one's options join its batch (the others keep their places in the queue).

    At most ``max_queue`` texts wait (a request is always let into an empty queue); a request
    that would pass that is refused at once with QueueFull. A request that gives up waiting
    (timeout, client gone) leaves the queue, so its texts never run unless their batch had
    already started.
    """

    def __init__(self, predict, batch_texts: int = 256, batch_chars: int = 100_000, batch_wait: float = 0.005,
                 max_queue: int = 1024):
        self.predict = predict
        self.batch_texts = batch_texts
        self.batch_chars = batch_chars
        self.batch_wait = batch_wait
        self.max_queue = max_queue
        self.waiting: deque[Pending] = deque()
        self.waiting_texts = 0
        self.waiting_chars = 0
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagtune-model")
        self.requests_per_batch: Counter = Counter()
        self.texts_per_batch: Counter = Counter()
        self.failures = 0
        self.counts: Counter = Counter()
        self.model_seconds = 0.0
        self.model_texts = 0

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        while self.waiting:
            _resolve(self.waiting.popleft().future, error=Stopping("the server is stopping"))
        self.executor.shutdown(wait=True)

    def submit(self, texts: list[str], options: tuple = ()) -> Pending:
        """Queue ``texts``, to be predicted with ``options``; QueueFull if the queue has no room for them."""
        if self.waiting and self.waiting_texts + len(texts) > self.max_queue:
            self.counts["rejected"] += 1
            raise QueueFull(self.waiting_texts, self.max_queue, self.retry_after())
        pending = Pending(texts, asyncio.get_running_loop().create_future(), options)
        self.waiting.append(pending)
        self.waiting_texts += len(texts)
        self.waiting_chars += pending.chars
        self.arrived.set()
        return pending

    def drop(self, pending: Pending) -> bool:
        """Nobody waits for ``pending`` any more: take it out of the queue. False if its batch had started."""
        pending.future.cancel()
        try:
            self.waiting.remove(pending)
        except ValueError:
            return False
        self.waiting_texts -= len(pending.texts)
        self.waiting_chars -= pending.chars
        self.counts["dropped_requests"] += 1
        self.counts["dropped_texts"] += len(pending.texts)
        self.arrived.set()  # the head of the queue may have changed
        return True

    async def wait(self, pending: Pending, timeout: float | None = None, gone: Awaitable | None = None) -> list:
        """The spans of a submitted request. TimedOut after ``timeout`` seconds; ClientGone as soon as
        ``gone`` completes. In both cases, and if the caller is cancelled, the request leaves the queue."""
        watch = asyncio.ensure_future(gone) if gone is not None else None
        try:
            done, _ = await asyncio.wait({pending.future} | ({watch} if watch else set()), timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if pending.future in done:
                return pending.future.result()
            if watch in done:
                self.counts["disconnected"] += 1
                raise ClientGone()
            self.counts["timed_out"] += 1
            raise TimedOut()
        finally:
            if watch is not None:
                watch.cancel()
            if not pending.future.done():
                self.drop(pending)

    async def run(self, texts: list[str]) -> list:
        """Spans for ``texts``, predicted in a batch shared with other waiting requests."""
        return await self.wait(self.submit(texts))

    def retry_after(self) -> int:
        """Seconds the model needs for the texts now waiting, from its speed so far (1 to 60)."""
        if not self.model_texts or self.model_seconds <= 0:
            return 1
        return max(1, min(60, math.ceil(self.waiting_texts * self.model_seconds / self.model_texts)))

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

    def queue_stats(self) -> dict:
        return {
            "waiting_requests": len(self.waiting),
            "waiting_texts": self.waiting_texts,
            **{key: self.counts[key] for key in ("rejected", "timed_out", "disconnected", "dropped_requests",
                                                 "dropped_texts")},
        }

    async def _run(self) -> None:
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            wait = self.waiting[0].arrived + self.batch_wait - time.monotonic()
            if wait > 0 and self.waiting_texts < self.batch_texts and self.waiting_chars < self.batch_chars:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await self._predict(self._take())

    def _take(self) -> list[Pending]:
        """The batch that starts now, out of the queue: the oldest requests with the oldest one's
        options that fit in the budget."""
        batch: list[Pending] = []
        others: deque[Pending] = deque()  # the requests left in the queue, in order
        options = self.waiting[0].options
        n_texts = n_chars = 0
        while self.waiting:
            item = self.waiting.popleft()
            if item.options != options:
                others.append(item)
                continue
            if batch and (n_texts + len(item.texts) > self.batch_texts or n_chars + item.chars > self.batch_chars):
                others.append(item)
                break
            self.waiting_texts -= len(item.texts)
            self.waiting_chars -= item.chars
            batch.append(item)
            n_texts += len(item.texts)
            n_chars += item.chars
        others.extend(self.waiting)
        self.waiting = others
        return batch

    async def _predict(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for item in batch for text in item.texts]
        options = batch[0].options
        self.requests_per_batch[len(batch)] += 1
        self.texts_per_batch[len(texts)] += 1
        start = time.monotonic()
        try:
            spans = await loop.run_in_executor(self.executor, self.predict, texts, *options)
            if len(spans) != len(texts):
                raise RuntimeError(f"the model answered {len(spans)} rows for {len(texts)} texts")
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer, never a dead server
            if len(batch) > 1:  # find the request that fails: the others still get their spans
                self.requests_per_batch[len(batch)] -= 1
                self.texts_per_batch[len(texts)] -= 1
                for item in batch:
                    if not item.future.done():  # nobody waits for the others' answers
                        await self._predict([item])
                return
            self.failures += 1
            log.error("prediction failed: %s: %s", type(e).__name__, e, exc_info=True)
            _resolve(batch[0].future, error=e)
            return
        finally:
            self.model_seconds += time.monotonic() - start
            self.model_texts += len(texts)
        lo = 0
        for item in batch:
            _resolve(item.future, spans[lo:lo + len(item.texts)])
            lo += len(item.texts)


def _resolve(future: asyncio.Future, result=None, error: Exception | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


MAX_NUMBER_CHARS = 100
"""A number in a request body longer than this is refused (400) rather than converted."""


class _BadNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"the body has a number of {len(text)} characters; the limit is {MAX_NUMBER_CHARS}")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"the body has a number of {len(text)} characters; the limit is {MAX_NUMBER_CHARS}")
    value = float(text)
    if math.isinf(value):
        raise _BadNumber(f"the body has a number out of range: {text}")
    return value


def _parse_constant(name: str):
    raise _BadNumber(f"the body is not valid JSON: {name} is not a JSON number")


@dataclass
class ExtractRequest:
    """What a ``POST /v1/extract`` body asks for."""

    texts: list[str]
    min_score: float | None = None
    """Spans scoring below this are left out; None: the server's default."""
    overlap: str | None = None
    """Which of a span tagger's spans are kept: "nested", "flat" or "any"; None: the tagger's."""


FIELDS = ("texts", "min_score", "overlap")


def parse_request(body: bytes, limits: Limits, head: str = "token") -> ExtractRequest:
    """The texts (and min_score, overlap) of an extract request to a tagger of ``head`` ("token"
    or "span"), or ApiError 400 (not JSON), 422 (wrong shape or value), 413 (too large)."""
    try:
        data = json.loads(body, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _BadNumber as e:
        raise ApiError(400, str(e)) from None
    except RecursionError:
        raise ApiError(400, "the body nests arrays or objects too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(422, f'expected a JSON object {{"texts": [...]}}, got {_json_type(data)}')
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        shown = ", ".join(map(excerpt, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ApiError(422, f"unknown field{'s' if len(unknown) > 1 else ''} {shown}; "
                            'the request is {"texts": [...]}, with "min_score" and "overlap" optional')
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
    min_score = data.get("min_score")
    if "min_score" in data:
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
            shown = min_score if isinstance(min_score, (int, float)) and not isinstance(min_score, bool) \
                else _json_type(min_score)
            raise ApiError(422, f'"min_score" must be a number from 0 to 1, got {shown}')
        min_score = float(min_score)
    return ExtractRequest(texts, min_score, _overlap(data, head))


def _overlap(data: dict, head: str) -> str | None:
    if "overlap" not in data:
        return None
    overlap = data["overlap"]
    if overlap not in OVERLAPS:
        shown = excerpt(overlap) if isinstance(overlap, str) else _json_type(overlap)
        raise ApiError(422, f'"overlap" must be "nested", "flat" or "any", got {shown}')
    if head == "token" and overlap == "any":
        raise ApiError(422, '"overlap": "any" needs a span tagger (--head span); this server\'s token tagger gives '
                            'spans side by side, never overlapping: ask for "flat" or "nested", or leave it out')
    return overlap


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


HEADS = {
    "token": "Character spans from a fine-tuned tagger, a token tagger: a tag per word, so spans lie side by "
             "side and never overlap.",
    "span": "Character spans from a fine-tuned tagger, a span tagger: spans may nest or overlap (an "
            "organisation over the place in its name); the request's \"overlap\" says which are kept.",
}
"""The first sentence of the API's description, by the tagger's head."""

OVERLAP_HELP = {
    "token": "Accepted for requests written for span taggers: a token tagger's spans never overlap, so "
             "\"nested\" and \"flat\" give the same spans; \"any\" is refused (422)",
    "span": "Which spans are kept: \"nested\" (the default: side by side or one inside another), \"flat\" "
            "(side by side only) or \"any\" (every span scoring at least min_score, overlapping or not); "
            "the most probable set under the first two rules",
}


def openapi_schema(labels: list[str], limits: Limits, min_score: float = 0.0, head: str = "token") -> dict:
    """The OpenAPI 3 description of the endpoints, for a tagger of ``head`` ("token" or "span")."""
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    def err(description):
        return dict(error, description=description)

    overlaps = list(OVERLAPS) if head == "span" else ["nested", "flat"]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tagtune",
            "version": _version(),
            "description": HEADS[head] + " Offsets are Python str indices "
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
                        "400": err("The body is not valid JSON (or not UTF-8), nests too deeply or has a "
                                   f"number longer than {MAX_NUMBER_CHARS} characters or out of range"),
                        "413": err(f"Too large: more than {limits.max_body} bytes, {limits.max_texts} texts, "
                                   f"{limits.max_chars} characters in a text or {limits.max_total_chars} in all"),
                        "422": err('Not {"texts": [strings], "min_score": number, "overlap": string}: a '
                                   'missing or unknown field, a wrong type, a min_score outside 0..1, or an '
                                   f'overlap other than {" or ".join(overlaps)}'),
                        "500": err("Prediction failed; the server keeps serving"),
                        "503": dict(err("Busy: the queue is full, or no answer within the timeout"),
                                    headers={"Retry-After": {"description": "Seconds to wait before retrying",
                                                             "schema": {"type": "integer"}}}),
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
                                             "items": {"type": "string", "maxLength": limits.max_chars}},
                                   "min_score": {"type": "number", "minimum": 0, "maximum": 1,
                                                 "description": "Leave out spans whose score is below this "
                                                                f"(default: the server's, {min_score:g})"},
                                   "overlap": {"type": "string",
                                               "enum": overlaps,
                                               "description": OVERLAP_HELP[head]}},
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
                                  "description": "Probability that exactly these characters form one "
                                                 "entity of this label, under the tagger's decoding"},
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
                    "required": ["status", "model", "head", "labels", "tags", "limits", "batching"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "model": {"type": "string", "description": "Name of the tagger folder"},
                        "head": {"type": "string", "enum": ["token", "span"],
                                 "description": "token: spans side by side; span: spans may nest or overlap"},
                        "labels": {"type": "array", "items": {"type": "string"},
                                   "description": "Entity labels the spans can carry"},
                        "tags": {"type": "array", "items": {"type": "string"},
                                 "description": "The model's tags (O, B-..., I-...); a span tagger's labels"},
                        "device": {"type": "string"},
                        "precision": {"type": "string", "enum": ["fp32", "bf16", "onnx"],
                                      "description": "How the model multiplies (--bf16), or onnx: as exported"},
                        "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "batching": {"type": "object", "description": "Counters of micro-batches since start"},
                        "min_score": {"type": "number", "description": "The server's default min_score"},
                        "queue": {"type": "object", "description": "max_queue and timeout as set; texts and "
                                  "requests waiting now; counters since start of requests refused (rejected), "
                                  "timed out, disconnected while waiting, and dropped from the queue unrun"},
                    },
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }


def create_app(tagger, name: str = "tagger", limits: Limits | None = None, batch_texts: int = 256,
               batch_wait: float = 0.005, timeout: float | None = 30.0, max_queue: int = 1024,
               min_score: float | None = None, listening: str | None = None):
    """The Starlette app serving ``tagger``: a SpanTagger, or anything with ``predict(texts)`` and
    ``labels`` (a token tagger, whose tags the labels are).

    A request gets 503 when its answer is not ready ``timeout`` seconds (None: no limit) after its
    texts were queued, or at once when ``max_queue`` texts already wait. Of the spans the tagger
    returns, those scoring below the request's ``min_score`` (default: ``min_score``; None: the
    tagger's own, or 0) are left out; a span tagger decodes with that ``min_score`` and the
    request's ``overlap``. ``listening``: the address the server listens on; when it is a loopback
    one, a request whose ``Host`` is not a loopback name or address gets 403 (:func:`loopback_hosts`)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    limits = limits or Limits()
    limits.check()
    check_queue(timeout, max_queue)
    min_score = check_min_score(getattr(tagger, "min_score", 0.0) if min_score is None else min_score, "min-score")
    timeout = timeout or None
    batcher = Batcher(tagger.predict, batch_texts=batch_texts, batch_chars=limits.max_total_chars,
                      batch_wait=batch_wait, max_queue=max_queue)
    head = "span" if isinstance(tagger, SpanTagger) else "token"
    labels = list(tagger.labels) if head == "span" else entity_labels(list(tagger.labels))
    schema = openapi_schema(labels, limits, min_score, head)
    page = page_html()

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def extract(request: Request):
        try:
            asked = parse_request(await read_body(request, limits.max_body), limits, head)
        except ApiError as e:
            return error(e.status, e.message)
        except ClientDisconnect:  # nobody to answer; the server sends nothing on a closed connection
            batcher.counts["disconnected"] += 1
            log.debug("client closed the connection before sending all of its body")
            return Response(status_code=400)
        texts = asked.texts
        floor = min_score if asked.min_score is None else asked.min_score
        if not texts:
            return JSONResponse({"results": []})
        # a span tagger decodes with the request's rule and floor: predict(texts, overlap, min_score)
        options = (asked.overlap or tagger.overlap, floor) if head == "span" else ()
        try:
            pending = batcher.submit(texts, options)
            spans = await batcher.wait(pending, timeout, client_gone(request.receive))
        except QueueFull as e:
            return error(503, str(e), {"Retry-After": str(e.retry_after)})
        except TimedOut:
            return error(503, f"no answer within the timeout of {timeout:g} s; the server is busy, retry later",
                         {"Retry-After": str(batcher.retry_after())})
        except ClientGone:
            log.debug("client closed the connection while waiting for its answer")
            return Response(status_code=503)
        except Stopping as e:
            return error(503, str(e))
        except Exception as e:  # noqa: BLE001
            message = str(e) if len(str(e)) <= 300 else str(e)[:300] + "..."
            return error(500, f"prediction failed: {type(e).__name__}: {message}")
        return JSONResponse({"results": [{"spans": [s.to_dict(text) for s in row
                                                    if not floor or (s.score is not None and s.score >= floor)]}
                                         for text, row in zip(texts, spans)]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": name, "head": head, "labels": labels,
                             "tags": list(tagger.labels),
                             "device": str(getattr(tagger, "device", "")),
                             "precision": getattr(tagger, "precision", None), "limits": asdict(limits),
                             "batching": batcher.stats(), "min_score": min_score,
                             "queue": {"max_queue": max_queue, "timeout": timeout, **batcher.queue_stats()}})

    async def openapi(request: Request):
        return JSONResponse(schema)

    async def index(request: Request):
        return HTMLResponse(page)

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
        exception_handlers=error_handlers(),
        middleware=[Middleware(Refusing, refusal=loopback_hosts)] if listening and loopback(listening) else [],
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def check_queue(timeout: float | None, max_queue: int) -> None:
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 <= timeout < math.inf):
        raise TagtuneError(f"timeout must be a number of seconds, 0 or more (0: no limit), got {timeout!r}")
    if not isinstance(max_queue, int) or max_queue < 1:
        raise TagtuneError(f"max-queue must be a positive integer, got {max_queue!r}")


def serve(model_dir, host: str = "127.0.0.1", port: int = 8080, limits: Limits | None = None,
          device: str | None = None, batch_texts: int = 256, batch_wait: float = 0.005,
          access_log: bool = False, timeout: float | None = 30.0, max_queue: int = 1024,
          min_score: float | str = "auto", bf16: str = "auto") -> None:
    """Load the tagger, open the port, serve until interrupted. Prints the address once listening.
    ``min_score``: spans scoring below it are left out, unless a request gives its own; "auto": 0
    for a token tagger, 0.5 for a span tagger. ``bf16``: "auto", "on" or "off", as
    :class:`tagtune.inference.tagger.Tagger` takes it."""
    require_server_packages()
    limits = limits or Limits()
    limits.check()
    if batch_texts < 1:
        raise TagtuneError(f"batch-texts must be positive, got {batch_texts}")
    if batch_wait < 0:
        raise TagtuneError(f"batch wait must not be negative, got {batch_wait}")
    check_queue(timeout, max_queue)
    min_score = None if min_score == "auto" else check_min_score(min_score, "min-score")
    check_bf16(bf16)
    tagger = Tagger.load(model_dir, device=device, bf16=bf16)  # its min_score the head's: 0, or 0.5
    sock = bind(host, port)
    app = create_app(tagger, Path(model_dir).resolve().name, limits, batch_texts, batch_wait, timeout, max_queue,
                     min_score, listening=sock.getsockname()[0])
    run_app(app, access_log=access_log, shown=model_dir, sock=sock)


