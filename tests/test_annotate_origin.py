"""`tagtune annotate` answers its own page only: requests forged by another site (no token, a
wrong one, a body that is not application/json, `Origin: null` or another site's, a `Host` that a
rebound name sends) get 403 with a JSON error, and OUT and the texts held for pages stay as they
were, byte for byte; one page holds one text however often it asks; SIGTERM leaves OUT as Ctrl-C
does; a torn last line of OUT says how to go on."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from tagtune.apps.annotate import TOKEN_HEADER, AnswerFile, Annotator, Guard, create_app, read_out, read_texts  # noqa: E402
from tagtune.apps.serve import bind  # noqa: E402
from test_annotate import annotating, lines, one_line_error, page_client  # noqa: E402
from test_serve import serving  # noqa: E402

LABELS = ["PER", "ORG"]
TEXTS = [f"text {i}: Ann met Bob at Acme" for i in range(8)]
EARLIER = {"id": 1, "text": TEXTS[0], "spans": [{"start": 8, "end": 11, "label": "PER", "text": "Ann"}]}


class Site:
    """An annotate server in this process (uvicorn on a real socket), so that a test can look at
    the texts its pages hold."""

    def __init__(self, folder: Path, host: str):
        (folder / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
        self.out = folder / "answers.jsonl"
        self.out.write_text(json.dumps(EARLIER) + "\n", encoding="utf-8")
        texts, _ = read_texts(folder / "texts.txt")
        self.file = AnswerFile(self.out)
        latest, answered, _ = read_out(self.out, texts, LABELS)
        self.annotator = Annotator(texts, LABELS, self.file, latest, answered)
        sock = bind(host, 0)
        self.port = sock.getsockname()[1]
        self.guard = Guard(sock.getsockname(), host)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.annotator, self.guard), log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def state(self):
        """OUT's bytes and which page holds which text (and until when)."""
        with self.annotator.lock:
            return self.out.read_bytes(), dict(self.annotator.holder), dict(self.annotator.held)

    def close(self):
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.file.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("origin"), "127.0.0.1")
    yield s
    s.close()


def page_token(site, host=None):
    """The token as the page carries it: read from the page the server serves."""
    response = site.http.get("/", headers={"Host": host} if host else {})
    assert response.status_code == 200, response.text
    return re.search(r'<meta name="tagtune-token" content="([^"]+)">', response.text).group(1)


def own(site, **more):
    """The headers of the server's own page on a POST."""
    return {TOKEN_HEADER: site.guard.token, "Content-Type": "application/json",
            "Origin": f"http://127.0.0.1:{site.port}", **more}


def assert_refused(response, fragment):
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"], response.json()


def test_the_page_carries_the_token_and_its_requests_are_answered(site):
    assert page_token(site) == site.guard.token
    assert page_token(site, f"localhost:{site.port}") == site.guard.token
    assert len(site.guard.token) >= 40  # secrets.token_urlsafe(32)
    page = site.http.get("/")
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    info = site.http.get("/api/info", headers={TOKEN_HEADER: site.guard.token})
    assert info.status_code == 200 and info.json()["progress"]["done"] == 1
    # the page's own Origin, under either name of the loopback address, and a charset, pass
    held = site.http.post("/api/next", json={"client": "own-page"}, headers=own(site))
    assert held.status_code == 200 and held.json()["item"]["index"] == 1, held.text
    again = site.http.post("/api/next", json={"client": "own-page"},
                           headers=own(site, Host=f"localhost:{site.port}", Origin=f"http://localhost:{site.port}",
                                       **{"Content-Type": "application/json; charset=utf-8"}))
    assert again.status_code == 200 and again.json()["item"]["index"] == 1, again.text
    assert site.state()[2] == {"own-page": 1}


def forgeries(port):
    """(name, method, path, headers, body) of requests another site can make, or one whose name
    was rebound to this address: each is refused whatever the body."""
    evil = f"evil.example:{port}"
    skip = json.dumps({"index": 2, "skip": True}).encode()
    release = json.dumps({"client": "own-page"}).encode()
    items = []
    for path, body in (("/api/answer", skip), ("/api/next", json.dumps({"client": "evil"}).encode()),
                       ("/api/let-go", release)):
        json_type = {"Content-Type": "application/json"}
        items += [
            ("no token", "POST", path, json_type, body),
            ("wrong token", "POST", path, {**json_type, TOKEN_HEADER: "x" * 43}, body),
            ("token in the address", "POST", path + "?token={token}", json_type, body),
            ("text/plain with the token", "POST", path, {"Content-Type": "text/plain", TOKEN_HEADER: "{token}"}, body),
            ("no Content-Type", "POST", path, {TOKEN_HEADER: "{token}"}, body),
            ("no-cors form", "POST", path, {"Content-Type": "application/x-www-form-urlencoded",
                                            "Origin": "http://evil.example"}, body),
            ("Origin null", "POST", path, {**json_type, TOKEN_HEADER: "{token}", "Origin": "null"}, body),
            ("another Origin", "POST", path, {**json_type, TOKEN_HEADER: "{token}",
                                              "Origin": "http://evil.example"}, body),
            ("another port's Origin", "POST", path, {**json_type, TOKEN_HEADER: "{token}",
                                                     "Origin": "http://127.0.0.1:1"}, body),
            ("rebound Host", "POST", path, {**json_type, TOKEN_HEADER: "{token}", "Host": evil,
                                            "Origin": f"http://{evil}"}, body),
            ("another port in Host", "POST", path, {**json_type, TOKEN_HEADER: "{token}", "Host": "127.0.0.1:1"},
             body),
        ]
    for path in ("/api/texts/0", "/api/info", "/"):
        items += [("rebound Host", "GET", path, {TOKEN_HEADER: "{token}", "Host": evil}, None),
                  ("rebound Host, no port", "GET", path, {TOKEN_HEADER: "{token}", "Host": "evil.example"}, None)]
    items += [("no token", "GET", "/api/texts/0", {}, None),
              ("wrong token", "GET", "/api/info", {TOKEN_HEADER: "x"}, None),
              ("another Origin", "GET", "/api/texts/0", {TOKEN_HEADER: "{token}", "Origin": "http://evil.example"},
               None)]
    return items


FRAGMENTS = {"Host": "is not this server", "Origin": "is not this server's page", "token": "this server's token",
             "Content-Type": "Content-Type must be application/json"}


@pytest.mark.parametrize("number", range(len(forgeries(0))))
def test_forged_requests_are_403_and_change_nothing(site, number):
    name, method, path, headers, body = forgeries(site.port)[number]
    token = site.guard.token
    if not site.state()[2]:  # a page holds a text, which a forged let-go would free
        assert site.http.post("/api/next", json={"client": "own-page"}, headers=own(site)).status_code == 200
    before = site.state()
    headers = {key: value.format(token=token) for key, value in headers.items()}
    response = site.http.request(method, path.format(token=token), headers=headers, content=body)
    if "Host" in name:
        fragment = FRAGMENTS["Host"]
    elif "Origin" in name or name == "no-cors form":
        fragment = FRAGMENTS["Origin"]
    elif "token" in name and "with the token" not in name:
        fragment = FRAGMENTS["token"]
    else:
        fragment = FRAGMENTS["Content-Type"]
    assert_refused(response, fragment)
    assert site.state() == before, name


def test_one_page_asking_300_times_holds_one_text(site):
    before_out, holder, held = site.state()
    answers = [site.http.post("/api/next", json={"client": "greedy"}, headers=own(site)) for _ in range(300)]
    assert {r.status_code for r in answers} == {200}
    out, holder_after, held_after = site.state()
    assert out == before_out
    assert {c: i for c, i in held_after.items() if c != "greedy"} == {c: i for c, i in held.items() if c != "greedy"}
    assert sum(client == "greedy" for client, _ in holder_after.values()) == 1
    # another page still gets a text, one neither of them holds
    other = site.http.post("/api/next", json={"client": "latecomer"}, headers=own(site)).json()["item"]
    assert other is not None and other["index"] not in held_after.values()
    # and 300 forged requests, each as another page, hold nothing
    before = site.state()
    for k in range(300):
        assert site.http.post("/api/next", json={"client": f"forged-{k}"},
                              headers={"Content-Type": "text/plain"}).status_code == 403
    assert site.state() == before


def test_a_release_from_the_page_frees_its_text(site):
    index = site.http.post("/api/next", json={"client": "leaving"}, headers=own(site)).json()["item"]["index"]
    assert site.state()[2]["leaving"] == index
    assert site.http.post("/api/let-go", json={"client": "leaving"}, headers=own(site)).status_code == 200
    assert "leaving" not in site.state()[2] and index not in site.state()[1]


def test_listening_on_every_address_any_host_needs_the_token(tmp_path):
    site = Site(tmp_path, "0.0.0.0")
    try:
        token = site.guard.token
        assert site.guard.page_path == f"/?token={token}"
        # an address or a loopback name: the page as it is
        assert page_token(site) == token
        assert page_token(site, f"localhost:{site.port}") == token
        # a name (the machine's, or one rebound to it): only with the token in the address
        name = f"annotate-host.example:{site.port}"
        assert_refused(site.http.get("/", headers={"Host": name}), "?token=")
        assert_refused(site.http.get("/?token=wrong", headers={"Host": name}), "?token=")
        page = site.http.get(site.guard.page_path, headers={"Host": name})
        assert page.status_code == 200 and f'content="{token}"' in page.text
        # any Host reaches the API, with the token only
        before = site.state()
        assert_refused(site.http.get("/api/texts/0", headers={"Host": name}), "this server's token")
        rebound = {"Host": name, "Origin": f"http://{name}"}  # same origin as far as the browser knows
        assert_refused(site.http.post("/api/answer", json={"index": 3, "skip": True}, headers=rebound),
                       "this server's token")
        assert site.state() == before
        answered = site.http.post("/api/answer", json={"index": 3, "skip": True},
                                  headers={"Host": name, "Origin": f"http://{name}", TOKEN_HEADER: token})
        assert answered.status_code == 200, answered.text
        assert lines(site.out)[-1] == {"id": 4, "text": TEXTS[3], "skipped": True}
    finally:
        site.close()


def test_listening_everywhere_the_printed_address_opens_the_page(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("Ann met Bob\n", encoding="utf-8")
    with annotating(tmp_path / "server.log", texts, "--labels", "PER", "--out", tmp_path / "out.jsonl", "--host",
                    "0.0.0.0", "--port", "0") as (url, _):
        found = re.fullmatch(r"http://0\.0\.0\.0:(\d+)/\?token=([\w-]{43})", url)
        assert found, url
        port, token = found.groups()
        # as printed, and with the machine's name in place of the address
        for host in (f"0.0.0.0:{port}", f"annotate-host.example:{port}"):
            page = httpx.get(f"http://127.0.0.1:{port}/?token={token}", headers={"Host": host}, timeout=60)
            assert page.status_code == 200 and f'content="{token}"' in page.text, page.text
        assert httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": f"annotate-host.example:{port}"},
                         timeout=60).status_code == 403


def test_the_guard_names_for_each_address():
    assert Guard(("127.0.0.1", 8080), "127.0.0.1").names == {"127.0.0.1", "localhost"}
    assert Guard(("127.0.0.1", 8080), "localhost").names == {"127.0.0.1", "localhost"}
    assert Guard(("::1", 8080, 0, 0), "::1").names == {"::1", "localhost"}
    assert Guard(("192.0.2.7", 8080), "192.0.2.7").names == {"192.0.2.7"}
    assert Guard(("192.0.2.7", 8080), "192.0.2.7").page_path == ""
    assert Guard(("::", 8080, 0, 0), "::").everywhere and not Guard(("192.0.2.7", 8080)).everywhere
    tokens = {Guard(("127.0.0.1", 8080)).token for _ in range(3)}
    assert len(tokens) == 3  # a new one at every start


# --------------------------------------------------------------------------- stopping and starting again


@pytest.mark.parametrize("how, status, said", [(signal.SIGTERM, 143, "tagtune: terminated"),
                                                (signal.SIGINT, 130, "tagtune: interrupted")])
def test_sigterm_and_sigint_leave_out_alike(tmp_path, how, status, said):
    texts = tmp_path / "texts.txt"
    texts.write_text("Ann met Bob\nAcme hired Ann\n", encoding="utf-8")
    # nothing answered: the OUT the server made is gone
    out = tmp_path / "empty.jsonl"
    with annotating(tmp_path / "1.log", texts, "--labels", "PER,ORG", "--out", out, "--port", "0") as (_, process):
        assert out.exists()
        process.send_signal(how)
        assert process.wait(timeout=60) == status
    log = (tmp_path / "1.log").read_text()
    assert said in log and "Traceback" not in log, log
    assert not out.exists()
    # an answer given: kept as it was written
    out = tmp_path / "answers.jsonl"
    with annotating(tmp_path / "2.log", texts, "--labels", "PER,ORG", "--out", out, "--port", "0") as (url, process):
        with page_client(url) as c:
            assert c.post("/api/answer", json={"index": 1, "spans": [{"start": 0, "end": 4, "label": "ORG"}]}) \
                .status_code == 200
        kept = out.read_bytes()
        process.send_signal(how)
        assert process.wait(timeout=60) == status
    assert out.read_bytes() == kept
    assert lines(out) == [{"id": 2, "text": "Acme hired Ann",
                           "spans": [{"start": 0, "end": 4, "label": "ORG", "text": "Acme"}]}]


def test_a_torn_last_line_says_which_and_how_to_go_on(tmp_path, cli):
    texts = tmp_path / "texts.txt"
    texts.write_text("Ann met Bob\nAcme hired Ann\nnothing\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    whole = (json.dumps({"id": 1, "text": "Ann met Bob", "spans": [[0, 3, "PER"]]}) + "\n"
             + json.dumps({"id": 3, "text": "nothing", "skipped": True}) + "\n")
    torn = json.dumps({"id": 2, "spans": [], "text": "Acme hired 東京"}, ensure_ascii=False).encode()[:-3]
    out.write_bytes(whole.encode() + torn)  # cut inside a character, as a write that did not finish leaves it
    run = lambda: cli("annotate", texts, "--labels", "PER,ORG", "--out", out, "--port", "0")  # noqa: E731
    before = out.read_bytes(), out.stat().st_mtime_ns
    result = run()
    one_line_error(result, f"{out}:3: invalid JSON")
    assert "the last line" in result.stderr and "remove that line" in result.stderr
    assert "every earlier answer is kept" in result.stderr
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    # a bad line before the last one is not called torn
    out.write_text(whole.replace('"nothing"', '"nothing'), encoding="utf-8")
    result = run()
    one_line_error(result, f"{out}:2: invalid JSON")
    assert "the last line" in result.stderr  # it is the last line here
    out.write_text(whole.replace('"Ann met Bob"', '"Ann met Bob'), encoding="utf-8")
    result = run()
    one_line_error(result, f"{out}:1: invalid JSON")
    assert "the last line" not in result.stderr
    # doing as the message says: every earlier answer is there
    out.write_bytes(whole.encode() + torn)
    out.write_bytes(out.read_bytes().rsplit(b"\n", 1)[0] + b"\n")
    log = tmp_path / "server.log"
    with open(log, "w") as f:
        process = subprocess.Popen([sys.executable, "-m", "tagtune", "annotate", str(texts), "--labels", "PER,ORG",
                                    "--out", str(out), "--port", "0"], stdout=f, stderr=subprocess.STDOUT)
    with serving(process, log):
        assert "answers.jsonl: 1 answered, 1 skipped, 1 to go" in log.read_text()
