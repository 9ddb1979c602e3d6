"""`tagtune serve` under hostile or unlucky clients, on a real server process: bodies nested too deeply
or with huge numbers, clients that hang up mid-body or while waiting, a full queue and a timeout.
Every answer other than 200 is JSON, the server log stays free of tracebacks, and texts whose
client is gone never reach the model.

Most tests serve a stub tagger (`predict` logs every batch it starts and finishes, and holds a batch
with "hold:NAME" until the test opens the gate NAME), so the model is busy exactly as long as a
test needs it, and no test depends on how fast this machine is; the CLI test serves a tiny real
tagger."""

import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from tagtune.apps.serve import ApiError, Batcher, Limits, MAX_NUMBER_CHARS, Stopping, parse_request  # noqa: E402
from test_serve import serving  # noqa: E402

STUB = r'''
import json, os, sys, time
from tagtune.apps.serve import Limits, create_app, run_app

ran_log, done_log, gates, timeout, max_queue = sys.argv[1:4] + [float(sys.argv[4]), int(sys.argv[5])]


class NotASpan:
    pass


class Stub:
    labels = ["O", "B-person", "I-person"]

    def predict(self, texts):
        with open(ran_log, "a") as f:
            f.write(json.dumps(texts) + "\n")
        for text in texts:
            if text.startswith("hold:"):  # until the test opens the gate (a file) of that name
                deadline = time.monotonic() + 300
                while not os.path.exists(os.path.join(gates, text[5:])) and time.monotonic() < deadline:
                    time.sleep(0.01)
            if text == "fail":
                raise RuntimeError("the model broke")
        with open(done_log, "a") as f:
            f.write(json.dumps(texts) + "\n")
        return [[NotASpan()] if text == "not-a-span" else [] for text in texts]


app = create_app(Stub(), "stub", Limits(max_body=300_000), batch_wait=0.005, timeout=timeout, max_queue=max_queue)
run_app(app, "127.0.0.1", 0, access_log=True, shown="stub")
'''

ACCESS_LINE = re.compile(r'^INFO: +127\.0\.0\.1:\d+ - "(GET|POST) \S+ HTTP/1\.1" \d{3}( [A-Za-z ]+)?$')


GATES = itertools.count()


class Server:
    def __init__(self, url, log_path, folder):
        self.url, self.log_path, self.folder = url, Path(log_path), Path(folder)
        self.port = int(url.rsplit(":", 1)[1])
        self.http = httpx.Client(base_url=url, timeout=60)

    def log(self, since=0):
        return self.log_path.read_text()[since:]

    def mark(self):
        return len(self.log_path.read_text())

    def ran(self):
        """Every text the model was given, in order."""
        return [t for line in (self.folder / "ran.jsonl").read_text().splitlines() for t in json.loads(line)]

    def finished(self):
        """Every text of the batches the model has finished, in order."""
        return [t for line in (self.folder / "done.jsonl").read_text().splitlines() for t in json.loads(line)]

    def queue(self):
        return self.http.get("/health").json()["queue"]

    def wait_until(self, condition, what, seconds=120):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            time.sleep(0.02)

    def post(self, texts):
        return self.http.post("/v1/extract", json={"texts": texts})

    def in_background(self, texts):
        """POST texts from a thread; returns the thread, whose .response is set when it is done."""
        thread = threading.Thread(target=lambda: setattr(thread, "response", self.post(texts)), daemon=True)
        thread.start()
        return thread

    def hold(self):
        """A text the model holds on to until ``release(text)``."""
        return f"hold:gate-{next(GATES)}"

    def release(self, text):
        (self.folder / "gates" / text[5:]).touch()

    def keep_model_busy(self):
        """A request that keeps the model busy until ``.release()`` (a method of the thread
        returned); returns once its batch is running."""
        tag = self.hold()
        thread = self.in_background([tag])
        thread.release = lambda: self.release(tag)
        self.wait_until(lambda: tag in self.ran(), "the model runs the busy request")
        return thread


@contextmanager
def stub_server(folder, timeout=30.0, max_queue=6):
    """The stub tagger served by run_app in its own process, stderr to a log file we can read."""
    log_path = folder / "server.log"
    for name in ("ran.jsonl", "done.jsonl"):
        (folder / name).write_text("")
    (folder / "gates").mkdir()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-c", STUB, *(str(folder / name) for name in
                                                                   ("ran.jsonl", "done.jsonl", "gates")),
                                    str(timeout), str(max_queue)], stdout=log, stderr=subprocess.STDOUT)
    with serving(process, log_path, timeout=120) as url:
        server = Server(url, log_path, folder)
        try:
            yield server
        finally:
            server.http.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with stub_server(tmp_path_factory.mktemp("stub")) as s:
        yield s


def assert_json_error(response, status, fragment=""):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    error = response.json()["error"]
    assert isinstance(error, str) and error
    assert fragment in error, error
    return error


def assert_clean_log(text, posts_answered):
    """Nothing in the server's log but access lines, and one POST line per answered POST."""
    lines = text.splitlines()
    assert "Traceback" not in text and "Exception" not in text and "Error" not in text, text
    assert all(ACCESS_LINE.match(line) for line in lines), text
    assert sum('"POST ' in line for line in lines) == posts_answered, text


def assert_still_serving(server):
    response = server.post(["still", "serving"])
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [{"spans": []}, {"spans": []}]}


# -- bodies --------------------------------------------------------------------------------------

HOSTILE_BODIES = {
    "100000 [": b"[" * 100_000,
    "40000 { in texts": b'{"texts": [' + b'{"a": ' * 40_000,
    "nested arrays, closed": b'{"texts": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    "100000-digit integer": b'{"texts": [' + b"9" * 100_000 + b"]}",
    "5000-digit negative integer": b'{"texts": ["a"], "n": -' + b"1" * 5000 + b"}",
    "long fraction": b'{"texts": [0.' + b"3" * 200_000 + b"]}",
    "float out of range": b'{"texts": [1e999999]}',
    "NaN": b'{"texts": [NaN]}',
    "Infinity": b'{"texts": ["a"], "x": -Infinity}',
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_are_json_400_with_short_messages(server, name):
    body = HOSTILE_BODIES[name]
    with pytest.raises(ApiError) as caught:
        parse_request(body, Limits(max_body=300_000))
    assert caught.value.status == 400
    response = server.http.post("/v1/extract", content=body, headers={"content-type": "application/json"})
    error = assert_json_error(response, 400)
    assert len(error) < 120, error
    assert_still_serving(server)


def test_numbers_up_to_the_limit_are_parsed_then_refused_as_422(server):
    number = b"1" * MAX_NUMBER_CHARS
    response = server.http.post("/v1/extract", content=b'{"texts": [' + number + b"]}")
    assert_json_error(response, 422, "texts[0] must be a string, got a number")


def test_messages_quote_only_an_excerpt_of_an_oversized_value(server):
    key = "k" * 200_000
    response = server.http.post("/v1/extract", content=json.dumps({key: 1, "texts": []}).encode())
    error = assert_json_error(response, 422, "unknown field")
    assert "(200000 characters)" in error and len(error) < 200, error
    keys = {f"{i:03d}" + "x" * 20_000: 1 for i in range(12)}
    response = server.http.post("/v1/extract", content=json.dumps(keys).encode())
    error = assert_json_error(response, 422, "and 7 more")
    assert len(error) < 1000, error


def test_every_answer_other_than_200_is_json(server):
    http = server.http
    assert_json_error(http.get("/nothing"), 404)
    assert_json_error(http.get("/v1/extract"), 405)
    assert_json_error(http.put("/health"), 405)
    assert_json_error(http.post("/v1/extract", content=b"{"), 400, "not valid JSON")
    assert_json_error(http.post("/v1/extract", content=b"\xff"), 400, "not UTF-8")
    assert_json_error(http.post("/v1/extract", content=b"x" * 300_001), 413, "the limit is 300000")
    assert_json_error(http.post("/v1/extract", json={"texts": ["a"] * 129}), 413, "129 texts")
    assert_json_error(http.post("/v1/extract", json={"texts": [1]}), 422, "must be a string")
    assert_json_error(server.post(["fail"]), 500, "prediction failed: RuntimeError: the model broke")
    # a bug in the server itself (here: the model returns something that is not a span)
    assert_json_error(server.post(["not-a-span"]), 500, "internal error: AttributeError")
    assert_still_serving(server)


# -- clients that go away ------------------------------------------------------------------------

def request_bytes(body: bytes, length: int | None = None) -> bytes:
    head = (f"POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
    return head.encode() + body


def hang_up(sock: socket.socket, how: str) -> None:
    if how == "reset":  # RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_body_leaves_no_traceback(server, how):
    mark, before = server.mark(), server.queue()["disconnected"]
    body = json.dumps({"texts": ["mid-body " * 50]}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request_bytes(body[: len(body) // 2], length=len(body)))
    time.sleep(0.3)
    hang_up(sock, how)
    server.wait_until(lambda: server.queue()["disconnected"] == before + 1, "the server notices the hang-up")
    assert_still_serving(server)
    assert_clean_log(server.log(mark), posts_answered=1)
    assert not any(t.startswith("mid-body") for t in server.ran())


@pytest.mark.parametrize("when, how", [("at-once", "close"), ("queued", "close"), ("queued", "reset")])
def test_client_gone_while_waiting_is_dropped_before_the_model_runs_it(server, when, how):
    mark, before = server.mark(), server.queue()
    busy = server.keep_model_busy()
    texts = [f"gone-{when}-{how}-1", f"gone-{when}-{how}-2"]
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request_bytes(json.dumps({"texts": texts}).encode()))
    if when == "queued":
        server.wait_until(lambda: server.queue()["waiting_texts"] == 2, "the request waits in the queue")
    hang_up(sock, how)
    server.wait_until(lambda: server.queue()["disconnected"] == before["disconnected"] + 1,
                      "the server notices the hang-up")
    after = server.queue()
    assert after["waiting_texts"] == 0
    assert busy.is_alive(), "the model is held busy: the texts left the queue before it was free"
    if when == "queued":
        assert after["dropped_requests"] == before["dropped_requests"] + 1
        assert after["dropped_texts"] == before["dropped_texts"] + 2
    busy.release()
    busy.join(timeout=120)
    assert busy.response.status_code == 200
    assert_still_serving(server)
    assert not set(texts) & set(server.ran()), "the model ran the texts of a client that was gone"
    assert_clean_log(server.log(mark), posts_answered=2)  # the busy request and the check, not the gone one


# -- a full queue and a timeout ------------------------------------------------------------------

def test_full_queue_is_503_at_once_with_retry_after(server):
    before = server.queue()
    assert before["max_queue"] == 6
    busy = server.keep_model_busy()
    four = server.in_background(["q1", "q2", "q3", "q4"])
    server.wait_until(lambda: server.queue()["waiting_texts"] == 4, "four texts wait")
    refused = server.post(["r1", "r2", "r3"])  # 4 + 3 > 6
    assert_json_error(refused, 503, "the queue is full: 4 texts are waiting (the limit is 6)")
    assert int(refused.headers["retry-after"]) >= 1
    # at once: the answer came while the model is still held and the four still wait
    assert busy.is_alive() and four.is_alive() and server.queue()["waiting_texts"] == 4
    two = server.in_background(["q5", "q6"])  # 4 + 2 fits
    server.wait_until(lambda: server.queue()["waiting_texts"] == 6, "six texts wait")
    busy.release()
    for thread in (busy, four, two):
        thread.join(timeout=120)
        assert thread.response.status_code == 200, thread.response.text
    assert server.queue()["rejected"] == before["rejected"] + 1
    assert not {"r1", "r2", "r3"} & set(server.ran())
    big = server.post([f"big{i}" for i in range(10)])  # larger than the queue, but nothing waits
    assert big.status_code == 200 and len(big.json()["results"]) == 10


def test_timeout_is_503_and_a_waiting_request_is_dropped(tmp_path):
    with stub_server(tmp_path, timeout=1.0) as server:
        mark = server.mark()
        slow = server.hold()
        running = server.in_background([slow])
        server.wait_until(lambda: slow in server.ran(), "the model runs the slow request")
        waiting = server.in_background(["late-1", "late-2"])
        for thread in (running, waiting):
            thread.join(timeout=120)
            assert_json_error(thread.response, 503, "no answer within the timeout of 1 s")
            assert int(thread.response.headers["retry-after"]) >= 1
        # the answers came at the timeout, not after the model: it still holds the slow batch
        assert server.finished() == []
        queue = server.queue()
        assert queue["timed_out"] == 2 and queue["dropped_requests"] == 1 and queue["dropped_texts"] == 2
        assert queue["timeout"] == 1.0
        server.release(slow)
        server.wait_until(lambda: server.finished() == [slow], "the slow batch is over")
        assert_still_serving(server)
        assert server.ran() == [slow, "still", "serving"]
        assert_clean_log(server.log(mark), posts_answered=3)


def test_requests_still_waiting_when_the_server_stops_get_an_answer():
    import asyncio

    async def scenario():
        ran = []
        batcher = Batcher(lambda texts: ran.extend(texts) or [[] for _ in texts], batch_wait=60)
        batcher.start()
        pending = batcher.submit(["never"])
        waiter = asyncio.ensure_future(batcher.wait(pending, timeout=None))
        await asyncio.sleep(0.05)
        await batcher.stop()
        with pytest.raises(Stopping):
            await waiter
        return ran

    assert asyncio.run(scenario()) == []


# -- the CLI, on a tiny real tagger --------------------------------------------------------------

def test_cli_timeout_and_max_queue(tiny_tagger, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "tagtune", "serve", str(tiny_tagger), "--port", "0",
                                    "--timeout", "0.001", "--max-queue", "16"], stdout=log, stderr=subprocess.STDOUT)
    with serving(process, log_path, timeout=120) as url, httpx.Client(base_url=url, timeout=60) as http:
        # the batch starts 5 ms (--batch-wait-ms) after the request arrives: the timeout comes first
        response = http.post("/v1/extract", json={"texts": ["Barack Obama visited Lisbon"]})
        assert_json_error(response, 503, "no answer within the timeout of 0.001 s")
        health = http.get("/health").json()
        assert health["queue"]["max_queue"] == 16 and health["queue"]["timeout"] == 0.001
        assert health["queue"]["timed_out"] == 1 and health["queue"]["dropped_texts"] == 1
        assert health["batching"]["texts"] == 0
    assert "Traceback" not in log_path.read_text()
    for option, fragment in ((["--max-queue", "0"], "max-queue must be a positive integer"),
                             (["--timeout", "-1"], "timeout must be a number of seconds")):
        result = subprocess.run([sys.executable, "-m", "tagtune", "serve", str(tiny_tagger), *option],
                                capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"tagtune: error: {fragment}"), result.stderr
