"""A stand-in for an OpenAI-compatible chat-completions server (Ollama, vLLM, llama.cpp, OpenAI)
on 127.0.0.1, for ``tagtune label`` to talk to through the real ``openai`` client.

It speaks the real request and reply shapes:

* ``POST /v1/chat/completions`` takes ``{"model", "messages": [{"role", "content"}], ...}`` and
  answers a ``chat.completion`` object (``id``, ``object``, ``created``, ``model``, ``choices``
  with the assistant's ``message`` and ``finish_reason``, ``usage`` with token counts);
* errors as OpenAI sends them, ``{"error": {"message", "type", "param", "code"}}``: 404
  ``model_not_found`` for a model it does not serve, 400 for a malformed body;
* ``GET /v1/models`` lists the models.

The teacher's answer to a text (the last user message) is ``answer(text)``, a list of
``{"text", "label"}`` entities (:func:`replay` makes one from gold examples, with a known share
of errors). ``response_format``: ``"follow"`` answers bare JSON, as a server with structured
outputs does; ``"ignore"`` answers prose with the JSON in a fenced block; ``"refuse"`` answers
400 to a request that has a ``response_format``. Faults are scripted with :meth:`LlmServer.fail`,
each taken by the next request that arrives: ``429`` (with ``Retry-After``), ``500``, ``drop``
(the connection closed without an answer), ``slow`` (the answer after ``seconds``), ``malformed``
(JSON cut short), ``prose`` (no JSON at all), ``extra`` (entities not in the text and with labels
not asked for added to the answer), ``too-long`` (400, the context length exceeded), ``ok`` (none:
the answer as usual). ``latency`` delays every answer; ``slots`` answers at most that
many requests at once (the others wait), as a server with a fixed number of sequences does.

Every request body is kept in ``server.requests``, faulted ones included.

Run alone, it serves gold files: ``python tests/llm_server.py --gold train.conll --error-rate 0.2
--latency 0.3 --port 11434`` (then ``--llm http://127.0.0.1:11434/v1 --llm-model teacher``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Fault:
    """What the next request gets instead of its answer (see the module doc); ``seconds`` is the
    ``Retry-After`` of a 429 and the delay of ``slow``."""

    kind: str
    seconds: float = 0.0


FAULTS = ("429", "500", "drop", "slow", "malformed", "prose", "extra", "too-long", "ok")


def replay(examples, error_rate: float = 0.0, seed: int = 0):
    """An ``answer`` that names the gold spans of ``examples`` (tagtune Examples) for their texts
    and nothing for other texts. A share ``error_rate`` of the gold entities, chosen by a random
    generator seeded with ``seed`` and the text (the same answer every time), is answered wrong:
    half of them left out, half given another of the gold labels."""
    gold = {example.text: example for example in examples}
    labels = sorted({span.label for example in examples for span in example.spans})

    def answer(text: str) -> list[dict]:
        example = gold.get(text)
        if example is None:
            return []
        rng = random.Random(f"{seed}:{text}")
        entities = []
        for span in sorted(example.spans):
            label = span.label
            if rng.random() < error_rate:
                others = [other for other in labels if other != label]
                if rng.random() < 0.5 or not others:
                    continue
                label = rng.choice(others)
            entities.append({"text": text[span.start:span.end], "label": label})
        return entities

    return answer


def _error(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Server(ThreadingHTTPServer):
    """A client that hangs up while its reply is written (a run stopping with requests in flight)
    is no error of the server's: said nowhere, as a real server would. Anything else is printed
    as http.server prints it."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LlmServer:
    """``with LlmServer(answer) as llm: ...``; ``llm.url`` is the base URL (``.../v1``)."""

    def __init__(self, answer=None, models=("teacher",), latency: float = 0.0, response_format: str = "follow",
                 slots: int | None = None, port: int = 0):
        self.answer = answer or (lambda text: [])
        self.models = tuple(models)
        self.latency = latency
        self.response_format = response_format
        self.requests: list[dict] = []
        self.faults: list[Fault] = []
        self.answered = 0
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(slots) if slots else None
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def fail(self, *faults: Fault | str) -> None:
        """Faults for the next requests, in order (a string is a Fault of that kind)."""
        with self._lock:
            self.faults.extend(Fault(f) if isinstance(f, str) else f for f in faults)

    def stop(self) -> None:
        """Stop answering: later connections are refused, slow answers are cut short."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LlmServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)

    def next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def content(self, body: dict, fault: Fault | None) -> str:
        """The assistant's message for ``body``'s text (the last user message)."""
        text = next(m["content"] for m in reversed(body["messages"]) if m.get("role") == "user")
        entities = list(self.answer(text))
        kind = fault.kind if fault else None
        if kind == "extra":
            entities += [{"text": "Atlantis", "label": entities[0]["label"] if entities else "PER"},
                         {"text": text.split()[0], "label": "NOT_ASKED"}]
        data = json.dumps({"entities": entities}, ensure_ascii=False)
        if kind == "malformed":
            return data[:max(1, len(data) // 2)]
        if kind == "prose":
            return "I could not find any entities I am sure of."
        if self.response_format == "ignore" or "response_format" not in body:
            return f"Here are the entities:\n```json\n{data}\n```"
        return data


def _handler(llm: LlmServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server writes a reply's headers and body apart; with Nagle's algorithm the body
        # would wait for the client's delayed ACK, ~40 ms a reply no real server adds
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (a timeout) and closed the connection
                self.close_connection = True

        def do_GET(self) -> None:
            if urlsplit(self.path).path.rstrip("/") != "/v1/models":
                self._send(404, _error(f"Unknown request URL: GET {self.path}", "invalid_request_error"))
                return
            self._send(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "stand-in"} for name in llm.models]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions":
                self._send(404, _error(f"Unknown request URL: POST {self.path}", "invalid_request_error"))
                return
            try:
                body = json.loads(raw)
                assert isinstance(body, dict) and isinstance(body.get("messages"), list) and body["messages"]
            except (ValueError, AssertionError):
                self._send(400, _error("We could not parse the JSON body of your request.", "invalid_request_error"))
                return
            llm.record(body)
            if body.get("model") not in llm.models:
                self._send(404, _error(f"The model `{body.get('model')}` does not exist or you do not have access "
                                       "to it.", "invalid_request_error", "model_not_found"))
                return
            if llm.response_format == "refuse" and "response_format" in body:
                self._send(400, _error("response_format is not supported by this server", "invalid_request_error",
                                       param="response_format"))
                return
            fault = llm.next_fault()
            if llm._slots is not None:
                llm._slots.acquire()
            try:
                self._answer(body, fault)
            finally:
                if llm._slots is not None:
                    llm._slots.release()

        def _answer(self, body: dict, fault: Fault | None) -> None:
            llm.wait(llm.latency)
            kind = fault.kind if fault else None
            if kind == "429":
                self._send(429, _error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
                           {"Retry-After": f"{fault.seconds:g}"})
                return
            if kind == "too-long":
                self._send(400, _error("This model's maximum context length is 8192 tokens. However, your messages "
                                       "resulted in 9001 tokens.", "invalid_request_error", "context_length_exceeded",
                                       "messages"))
                return
            if kind == "500":
                self._send(500, _error("The server had an error while processing your request.", "server_error"))
                return
            if kind == "drop":
                self.close_connection = True  # no answer: the client sees the connection closed
                return
            if kind == "slow":
                llm.wait(fault.seconds)
            content = llm.content(body, fault)
            prompt = sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4 + 1
            completion = len(content) // 4 + 1
            with llm._lock:
                llm.answered += 1
                number = llm.answered
            self._send(200, {
                "id": f"chatcmpl-stand-in-{number}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": "fp_stand_in",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            })

    return Handler


def main(argv=None) -> None:
    from tagtune.data.formats import read_examples

    parser = argparse.ArgumentParser(description="Serve gold files as a teacher model (an OpenAI-compatible API).")
    parser.add_argument("--gold", nargs="*", default=[], help="annotated files whose spans are the answers")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of gold entities answered wrong")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--slots", type=int, help="requests answered at once at most")
    parser.add_argument("--model", default="teacher", help="the model name served")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    examples = [e for path in args.gold for e in read_examples(path, overlaps=True)]
    llm = LlmServer(replay(examples, args.error_rate, args.seed), models=(args.model,), latency=args.latency,
                    slots=args.slots, port=args.port)
    print(llm.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        llm.stop()


if __name__ == "__main__":
    main()
