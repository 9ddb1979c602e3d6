"""`tagtune serve` as a real server on a real tagger: spans equal Tagger.predict, concurrent requests
are micro-batched without mixing results, bad requests get 400/413/422 and the server keeps serving."""

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

from tagtune.apps.serve import Limits, bind, create_app, entity_labels  # noqa: E402
from tagtune import Tagger  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LIMITS = ["--max-texts", "8", "--max-chars", "400", "--max-total-chars", "1200", "--max-body", "20000"]


@contextmanager
def serving(process, log_path, timeout: float = 180):
    """The base URL a started `tagtune serve` process prints to ``log_path``; the process is
    stopped (terminated, then killed) when the block ends."""
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"on (http://\S+)", Path(log_path).read_text())
            if found:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{Path(log_path).read_text()}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(folder, *options, log_path):
    """`python -m tagtune serve FOLDER --port 0 ...` in a subprocess; yields its base URL."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "tagtune", "serve", str(folder), "--port", "0",
                                    *map(str, options)], stdout=log, stderr=subprocess.STDOUT)
    with serving(process, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def server(trained_tagger, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(trained_tagger, *LIMITS, log_path=log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tagger(trained_tagger):
    return Tagger.load(trained_tagger, device="cpu")


@pytest.fixture(scope="module")
def texts(tweets):
    return [" ".join(tokens) for tokens, _ in tweets[600:760]]


def expected(tagger, texts):
    return [[s.to_dict(t) for s in spans] for t, spans in zip(texts, tagger.predict(texts))]


SCORE_TOLERANCE = {"fp32": 2e-4, "bf16": 5e-3}
"""How far a span's score may move with the other texts of its batch: the last rounded digit in
fp32; bf16 keeps 8 bits of each number, about two decimal digits."""


def assert_same_spans(got, want, precision="fp32"):
    """Offsets, labels and texts equal; scores equal to rounding (batch composition may move the
    last bit, more so in bf16: ``precision`` is the tagger's)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [(s["start"], s["end"], s["label"], s["text"]) for s in g] == \
               [(s["start"], s["end"], s["label"], s["text"]) for s in w]
        assert [s["score"] for s in g] == pytest.approx([s["score"] for s in w], abs=SCORE_TOLERANCE[precision])


def extract(client, texts):
    response = client.post("/v1/extract", json={"texts": texts})
    assert response.status_code == 200, response.text
    return [r["spans"] for r in response.json()["results"]]


def assert_still_serving(client, tagger, texts):
    assert_same_spans(extract(client, texts[:3]), expected(tagger, texts[:3]), tagger.precision)


def test_spans_equal_tagger_predict_in_order(client, tagger, texts):
    got = []
    for lo in range(0, 48, 8):
        got += extract(client, texts[lo:lo + 8])
    want = expected(tagger, texts[:48])
    assert sum(map(len, want)) > 5, "the trained tagger should find some entities in 48 tweets"
    assert_same_spans(got, want, tagger.precision)
    for text, spans in zip(texts, got):
        assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)


def test_empty_inputs(client):
    assert client.post("/v1/extract", json={"texts": []}).json() == {"results": []}
    assert client.post("/v1/extract", json={"texts": ["", " "]}).json() == {"results": [{"spans": []}, {"spans": []}]}


def test_offsets_are_code_points_into_the_text_as_sent(client, tagger):
    text = "🎉🎉 Barack Obama と London で会った 😀 Taylor Swift"
    (spans,) = extract(client, [text])
    assert_same_spans([spans], expected(tagger, [text]), tagger.precision)
    assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)


def test_health_and_openapi(client, tagger):
    from openapi_spec_validator import validate

    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["tags"] == tagger.labels
    assert health["precision"] == tagger.precision in ("fp32", "bf16")
    assert health["labels"] == entity_labels(tagger.labels)
    assert "person" in health["labels"] and "O" not in health["labels"]
    assert health["limits"] == {"max_texts": 8, "max_chars": 400, "max_total_chars": 1200, "max_body": 20000}
    assert health["queue"]["max_queue"] == 1024 and health["queue"]["timeout"] == 30.0
    assert health["queue"]["waiting_texts"] == 0
    schema = client.get("/openapi.json").json()
    validate(schema)
    assert set(schema["paths"]) >= {"/v1/extract", "/health", "/openapi.json"}
    assert "Retry-After" in schema["paths"]["/v1/extract"]["post"]["responses"]["503"]["headers"]
    assert client.get("/").headers["content-type"].startswith("text/html")


@contextmanager
def in_process(app):
    """``app`` served by uvicorn in a thread of this process, on a free port; yields its base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class HeldFirst:
    """The real tagger, except that its first batch waits until ``go`` is set: the requests that
    come meanwhile are all queued when the model is free again, however slow this machine is."""

    def __init__(self, tagger):
        self.tagger, self.labels = tagger, tagger.labels
        self.running, self.go = threading.Event(), threading.Event()

    def predict(self, texts):
        if not self.running.is_set():
            self.running.set()
            self.go.wait(300)
        return self.tagger.predict(texts)


def test_concurrent_requests_are_batched_and_not_mixed(tagger, texts):
    model = HeldFirst(tagger)
    app = create_app(model, limits=Limits(), batch_texts=8)
    threads = 16
    jobs = {t: texts[t * 3:][: 1 + t % 3] for t in range(threads)}
    results, errors = {}, []

    def work(c, t):
        try:
            results[t] = extract(c, jobs[t])
        except Exception as e:  # reported below
            errors.append(e)

    with in_process(app) as url, httpx.Client(base_url=url, timeout=300) as c:
        first = threading.Thread(target=work, args=(c, "first"))
        jobs["first"] = texts[100:101]
        first.start()
        pool = [threading.Thread(target=work, args=(c, t)) for t in range(threads)]
        try:
            assert model.running.wait(120), "the first request did not reach the model"
            for thread in pool:
                thread.start()
            deadline = time.monotonic() + 120
            while c.get("/health").json()["queue"]["waiting_requests"] < threads:
                assert time.monotonic() < deadline, "the requests did not all reach the queue"
                time.sleep(0.02)
        finally:
            model.go.set()
        for thread in [first, *pool]:
            thread.join(timeout=300)
        assert not errors, errors
        for key, job in jobs.items():
            assert_same_spans(results[key], expected(tagger, job), tagger.precision)
        batching = c.get("/health").json()["batching"]
    # the first request alone, then the 16 that waited (1 to 3 texts each) in batches of at most 8
    # texts: two requests at least in each
    waited = sum(len(job) for t, job in jobs.items() if t != "first")
    assert batching["requests"] == threads + 1 and batching["texts"] == waited + 1
    assert all(int(k) <= 8 for k in batching["texts_per_batch"]), batching
    assert -(-waited // 8) <= batching["batches"] - 1 <= threads // 2, batching
    assert batching["max_requests_per_batch"] > 1, batching


def test_bad_json_is_400(client, tagger, texts):
    for body in (b'{"texts": ["a"', b"not json", b"\xff\xfe{}"):
        response = client.post("/v1/extract", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]
        assert_still_serving(client, tagger, texts)


@pytest.mark.parametrize("body, fragment", [
    ({}, 'missing field "texts"'),
    ({"text": "Obama"}, "unknown field 'text'"),
    ({"texts": ["a"], "lang": "en"}, "unknown field 'lang'"),
    ({"texts": "Obama in London"}, '"texts" must be a list of strings, got a string'),
    ({"texts": ["ok", 3]}, "texts[1] must be a string, got a number"),
    ({"texts": ["ok", None]}, "texts[1] must be a string, got null"),
    (["Obama"], "expected a JSON object"),
    ('"\\ud800"', "unpaired surrogate"),
    ({"texts": ["a"], "min_score": 1.5}, '"min_score" must be a number from 0 to 1, got 1.5'),
    ({"texts": ["a"], "min_score": -0.01}, '"min_score" must be a number from 0 to 1, got -0.01'),
    ({"texts": ["a"], "min_score": "0.5"}, '"min_score" must be a number from 0 to 1, got a string'),
    ({"texts": ["a"], "min_score": True}, '"min_score" must be a number from 0 to 1, got a boolean'),
    ({"texts": ["a"], "min_score": None}, '"min_score" must be a number from 0 to 1, got null'),
    ({"texts": ["a"], "overlap": "any"}, '"overlap": "any" needs a span tagger (--head span); this server\'s token '
                                         'tagger gives spans side by side, never overlapping'),
    ({"texts": ["a"], "overlap": "Flat"}, '"overlap" must be "nested", "flat" or "any", got \'Flat\''),
    ({"texts": ["a"], "overlap": 1}, '"overlap" must be "nested", "flat" or "any", got a number'),
])
def test_wrong_fields_are_422(client, tagger, texts, body, fragment):
    if isinstance(body, str):  # a lone surrogate, which json.dumps would escape the same way
        content = ('{"texts": [' + body + ']}').encode()
    else:
        content = json.dumps(body).encode()
    response = client.post("/v1/extract", content=content)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert_still_serving(client, tagger, texts)


def test_flat_and_nested_change_nothing_for_a_token_tagger(client, tagger, texts):
    """A token tagger's spans never overlap: a request asking for "flat" or "nested" spans (as one
    written for a span tagger does) gets the spans it gets without."""
    plain = extract(client, texts[:8])
    assert sum(map(len, plain)) > 0
    for overlap in ("flat", "nested"):
        response = client.post("/v1/extract", json={"texts": texts[:8], "overlap": overlap})
        assert response.status_code == 200, response.text
        assert_same_spans([r["spans"] for r in response.json()["results"]], plain, tagger.precision)
    health, schema = client.get("/health").json(), client.get("/openapi.json").json()
    assert health["head"] == "token" and "a token tagger" in schema["info"]["description"]
    assert schema["components"]["schemas"]["ExtractRequest"]["properties"]["overlap"]["enum"] == ["nested", "flat"]


def test_requests_asking_for_other_options_never_share_a_batch():
    """Each batch runs with its requests' options (a span tagger's overlap and min_score): the oldest
    request's, joined by the later ones with the same, the others keeping their order."""
    import asyncio

    from tagtune.apps.serve import Batcher

    calls = []

    def predict(texts, *options):
        calls.append((list(texts), options))
        return [[] for _ in texts]

    async def main():
        batcher = Batcher(predict, batch_wait=0.2)
        batcher.start()
        asked = [("a", ("flat", 0.5)), ("b", ("nested", 0.5)), ("c", ("flat", 0.5)), ("d", ("nested", 0.9)),
                 ("e", ("nested", 0.5))]
        pending = [batcher.submit([text], options) for text, options in asked]  # all queued before the first batch
        await asyncio.gather(*(batcher.wait(p, timeout=60) for p in pending))
        await batcher.stop()
        return batcher.stats()

    stats = asyncio.run(main())
    assert calls == [(["a", "c"], ("flat", 0.5)), (["b", "e"], ("nested", 0.5)), (["d"], ("nested", 0.9))]
    assert stats["requests"] == 5 and stats["batches"] == 3


def filtered(spans, floor):
    return [[s for s in row if s["score"] >= floor] for row in spans]


def floor_between(spans):
    """A threshold in the widest gap between two of the spans' (rounded) scores: spans on both sides."""
    scores = sorted({s["score"] for row in spans for s in row})
    assert len(scores) >= 3, scores
    gap, k = max((b - a, k) for k, (a, b) in enumerate(zip(scores, scores[1:])))
    assert gap > 1e-3, scores
    return (scores[k] + scores[k + 1]) / 2


def with_spans(tagger, texts, n: int = 8) -> list[str]:
    """The first ``n`` of ``texts`` in which ``tagger`` finds spans (a request holds at most 8)."""
    return [t for t, row in zip(texts, tagger.predict(texts)) if row][:n]


def test_min_score_in_the_request(client, tagger, texts):
    """A request's "min_score" leaves out the spans scoring below it; the server's default keeps all."""
    some = with_spans(tagger, texts)
    full = extract(client, some)
    scores = [s["score"] for row in full for s in row]
    assert all(0 < s <= 1 for s in scores)
    floor = floor_between(full)
    response = client.post("/v1/extract", json={"texts": some, "min_score": floor})
    assert response.status_code == 200, response.text
    got = [r["spans"] for r in response.json()["results"]]
    assert_same_spans(got, filtered(full, floor))
    assert 0 < sum(map(len, got)) < len(scores)
    assert client.post("/v1/extract", json={"texts": some, "min_score": 0}).json()["results"] == \
        client.post("/v1/extract", json={"texts": some}).json()["results"]
    assert client.post("/v1/extract", json={"texts": [], "min_score": 1}).json() == {"results": []}


def test_server_min_score_is_the_default_of_requests(tagger, texts):
    """create_app(min_score=...) (serve --min-score) filters every request that does not say otherwise."""
    from starlette.testclient import TestClient

    from tagtune import TagtuneError

    some = with_spans(tagger, texts)
    everything = [[s.to_dict(t) for s in row] for t, row in zip(some, tagger.predict(some))]
    floor = floor_between(everything)
    with TestClient(create_app(tagger, limits=Limits(), min_score=floor)) as c:
        assert c.get("/health").json()["min_score"] == floor
        default = c.post("/v1/extract", json={"texts": some}).json()["results"]
        assert_same_spans([r["spans"] for r in default], filtered(everything, floor))
        lowered = c.post("/v1/extract", json={"texts": some, "min_score": 0.0}).json()["results"]
        assert_same_spans([r["spans"] for r in lowered], everything)
        schema = c.get("/openapi.json").json()["components"]["schemas"]["ExtractRequest"]["properties"]
        assert schema["min_score"]["minimum"] == 0 and schema["min_score"]["maximum"] == 1
    for bad in (1.5, -1, float("nan")):
        with pytest.raises(TagtuneError, match="min-score must be a number from 0 to 1"):
            create_app(tagger, min_score=bad)


@pytest.mark.parametrize("case", ["texts", "chars", "total-chars", "body", "chunked-body"])
def test_limits_are_413(client, tagger, texts, case):
    if case == "texts":
        response = client.post("/v1/extract", json={"texts": ["a"] * 9})
        fragment = "9 texts in one request; the limit is 8"
    elif case == "chars":
        response = client.post("/v1/extract", json={"texts": ["ok", "x" * 401]})
        fragment = "texts[1] has 401 characters; the limit is 400"
    elif case == "total-chars":
        response = client.post("/v1/extract", json={"texts": ["y" * 300] * 5})
        fragment = "1500 characters in all texts; the limit is 1200"
    elif case == "body":
        response = client.post("/v1/extract", json={"texts": ["z" * 100], "pad": " " * 30000})
        fragment = "the limit is 20000"
    else:
        response = client.post("/v1/extract", content=iter([b'{"texts": ["'] + [b"w" * 1000] * 25 + [b'"]}']))
        fragment = "more than 20000 bytes"
    assert response.status_code == 413, response.text
    assert fragment in response.json()["error"]
    assert_still_serving(client, tagger, texts)


def test_a_host_that_is_not_this_machine_is_refused(client, server, tagger, texts):
    """Listening on 127.0.0.1, the server refuses a Host a rebound name sends (DNS rebinding), and
    answers every loopback name and address."""
    port = server.rsplit(":", 1)[1]
    before = client.get("/health").json()["batching"]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"192.0.2.1:{port}",
                 f"localhost.evil.example:{port}", f"[::ffff:192.0.2.1]:{port}", "bad host", ""):
        for method, path in (("POST", "/v1/extract"), ("GET", "/health"), ("GET", "/"), ("GET", "/openapi.json")):
            response = client.request(method, path, json={"texts": texts[:1]} if method == "POST" else None,
                                      headers={"Host": host})
            assert response.status_code == 403, (host, path, response.text)
            assert response.headers["content-type"] == "application/json"
            assert "is not this machine" in response.json()["error"]
    assert client.get("/health").json()["batching"] == before  # nothing reached the model
    for host in (f"localhost:{port}", f"LocalHost:{port}", f"127.0.0.1:{port}", f"127.0.0.2:{port}", f"[::1]:{port}",
                 f"app.localhost:{port}", "localhost", f"[::ffff:127.0.0.1]:{port}"):
        response = client.post("/v1/extract", json={"texts": texts[:2]}, headers={"Host": host})
        assert response.status_code == 200, (host, response.text)
        assert_same_spans([r["spans"] for r in response.json()["results"]], expected(tagger, texts[:2]),
                          tagger.precision)


def test_listening_elsewhere_any_host_is_answered(tagger):
    from starlette.testclient import TestClient

    for listening, status in (("0.0.0.0", 200), ("192.0.2.7", 200), ("::", 200), ("127.0.0.1", 403), ("::1", 403)):
        with TestClient(create_app(tagger, listening=listening), base_url="http://evil.example:8080") as c:
            assert c.post("/v1/extract", json={"texts": ["Obama"]}).status_code == status, listening
            assert c.get("/health").status_code == status, listening


def test_unknown_path_and_method_answer_json(client):
    assert client.get("/v2/nothing").status_code == 404
    response = client.get("/v1/extract")
    assert response.status_code == 405 and "error" in response.json()


class FailsOn:
    """The real tagger, except that a batch holding ``bad`` raises, as a model bug would."""

    def __init__(self, tagger, bad):
        self.tagger, self.bad, self.labels = tagger, bad, tagger.labels

    def predict(self, texts):
        if self.bad in texts:
            raise RuntimeError("the model broke on this text")
        return self.tagger.predict(texts)


def test_failed_prediction_is_500_and_other_requests_in_its_batch_still_succeed(tagger, texts):
    app = create_app(FailsOn(tagger, "boom"), limits=Limits(), batch_wait=0.05)
    with in_process(app) as url:
        with httpx.Client(base_url=url, timeout=120) as c:
            answers = {}

            def send(key, batch):
                answers[key] = c.post("/v1/extract", json={"texts": batch})

            jobs = {"bad": ["fine", "boom"], "good1": texts[:2], "good2": texts[2:5]}
            pool = [threading.Thread(target=send, args=item) for item in jobs.items()]
            for t in pool:
                t.start()
            for t in pool:
                t.join(timeout=120)
            assert answers["bad"].status_code == 500
            assert "prediction failed: RuntimeError: the model broke on this text" in answers["bad"].json()["error"]
            for key in ("good1", "good2"):
                assert answers[key].status_code == 200, answers[key].text
                assert_same_spans([r["spans"] for r in answers[key].json()["results"]], expected(tagger, jobs[key]),
                                  tagger.precision)
            assert app.state.batcher.failures == 1
            assert_still_serving(c, tagger, texts)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tagtune", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result, fragment):
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    assert fragment in lines[0], lines[0]


def test_bad_folder_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("serve", tmp_path / "missing"), "no such folder")
    assert_one_line_error(run_cli("serve", tmp_path, "--port", "0"), str(tmp_path))
    assert_one_line_error(run_cli("serve", tmp_path, "--max-texts", "0"), "max-texts must be a positive integer")


def test_port_in_use_is_a_one_line_error(trained_tagger):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(run_cli("serve", trained_tagger, "--port", port), f"cannot listen on 127.0.0.1:{port}")


def test_load_bench_smoke(trained_tagger, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "load_bench.py"), "--smoke", "--model",
                             str(trained_tagger), "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0 and figures["busy_503"] == 0
    assert figures["answered"] == figures["requests"] == 64
    assert figures["requests_per_second"] > 0 and figures["p99_ms"] >= figures["p50_ms"] > 0
    assert sum(int(k) * n for k, n in figures["requests_per_batch"].items()) == figures["requests"]
    assert figures["server_queue"]["rejected"] == 0
