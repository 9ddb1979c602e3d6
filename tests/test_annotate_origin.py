"""`tagtune annotate` answers its own page only: requests forged by another site (no token, a
wrong one, a body that is not application/json, `Origin: null` or another site's, a `Host` that a
rebound name sends) get 403 with a JSON error, and OUT and the texts held for pages stay as they
were, byte for byte; one page holds one text however often it asks; a page that stops beating
(a browser stopped, in chromium too) loses its text to the next page within seconds, and its late
answer never replaces another page's unseen; SIGTERM leaves OUT as Ctrl-C does; a torn last line
of OUT says how to go on."""

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
from test_annotate import annotating, lines, one_line_error, page_client, shown  # noqa: E402
from test_serve import serving  # noqa: E402

LABELS = ["PER", "ORG"]
TEXTS = [f"text {i}: Ann met Bob at Acme" for i in range(8)]
EARLIER = {"id": 1, "text": TEXTS[0], "spans": [{"start": 8, "end": 11, "label": "PER", "text": "Ann"}]}


class Site:
    """An annotate server in this process (uvicorn on a real socket), so that a test can look at
    the texts its pages hold; ``timing`` (beat, release) goes to the Annotator."""

    def __init__(self, folder: Path, host: str, texts: list[str] = TEXTS, **timing):
        (folder / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        self.out = folder / "answers.jsonl"
        self.out.write_text(json.dumps(EARLIER) + "\n", encoding="utf-8")
        texts, _ = read_texts(folder / "texts.txt")
        self.file = AnswerFile(self.out)
        latest, answered, _ = read_out(self.out, texts, LABELS)
        self.annotator = Annotator(texts, LABELS, self.file, latest, answered, **timing)
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
        """OUT's bytes, which page holds which text, and when each was last heard from."""
        with self.annotator.lock:
            return (self.out.read_bytes(), dict(self.annotator.holder), dict(self.annotator.held),
                    dict(self.annotator.heard))

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
    beat = json.dumps({"client": "evil", "index": 2}).encode()
    for path, body in (("/api/answer", skip), ("/api/next", json.dumps({"client": "evil"}).encode()),
                       ("/api/let-go", release), ("/api/beat", beat)):
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
    before_out, holder, held, _ = site.state()
    answers = [site.http.post("/api/next", json={"client": "greedy"}, headers=own(site)) for _ in range(300)]
    assert {r.status_code for r in answers} == {200}
    out, holder_after, held_after, _ = site.state()
    assert out == before_out
    assert {c: i for c, i in held_after.items() if c != "greedy"} == {c: i for c, i in held.items() if c != "greedy"}
    assert sum(client == "greedy" for client in holder_after.values()) == 1
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


class Beating:
    """A thread that beats, as an open page does, for each page in ``pages`` (client -> index)."""

    def __init__(self, site, every: float):
        self.pages: dict[str, int] = {}
        self.stop = threading.Event()
        self.http = httpx.Client(base_url=site.url, timeout=60, headers=own(site))

        def run():
            while not self.stop.wait(every):
                for client, index in list(self.pages.items()):
                    assert self.http.post("/api/beat", json={"client": client, "index": index}).status_code == 200

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)
        self.http.close()


def test_a_silent_page_loses_its_text_within_seconds_and_its_late_answer_replaces_none(tmp_path):
    release = 1.0
    site = Site(tmp_path, "127.0.0.1", beat=0.25, release=release)
    beating = Beating(site, 0.25)
    post = lambda path, body: site.http.post(path, json=body, headers=own(site))  # noqa: E731
    try:
        info = site.http.get("/api/info", headers={TOKEN_HEADER: site.guard.token}).json()
        assert (info["beat_seconds"], info["release_seconds"]) == (0.25, release)
        for index in range(3, 8):  # answered already: texts 1 and 2 are the last
            assert post("/api/answer", {"index": index, "skip": True}).status_code == 200
        start = time.monotonic()
        crashed = post("/api/next", {"client": "crashed"}).json()["item"]
        assert crashed["index"] == 1 and crashed["version"] == 0
        assert post("/api/next", {"client": "open"}).json()["item"]["index"] == 2
        beating.pages["open"] = 2
        assert post("/api/next", {"client": "late"}).json()["held"] == 2
        # "crashed" sends nothing more: its text goes to the next page that asks, after the release time
        while (item := post("/api/next", {"client": "late"}).json()["item"]) is None:
            assert time.monotonic() - start < release + 10, "the silent page's text was never let go"
            time.sleep(0.05)
        assert item["index"] == 1 and time.monotonic() - start > release
        beating.pages["late"] = 1
        assert site.state()[2] == {"open": 2, "late": 1}  # the page that kept beating keeps its text
        # the crashed page comes back: told its text is elsewhere; its answer is still an answer
        assert post("/api/beat", {"client": "crashed", "index": 1}).json() == {"elsewhere": True}
        assert site.state()[2] == {"open": 2, "late": 1}
        answer = {"index": 1, "spans": [{"start": 8, "end": 11, "label": "PER"}]}
        assert post("/api/answer", {**answer, "version": crashed["version"]}).status_code == 200
        assert lines(site.out)[-1]["spans"] == [{"start": 8, "end": 11, "label": "PER", "text": "Ann"}]
        # and the page that got the text meanwhile does not write over it unseen
        before = site.out.read_bytes()
        refused = post("/api/answer", {"index": 1, "skip": True, "version": item["version"]})
        assert refused.status_code == 409 and refused.json()["version"] == 1, refused.text
        assert "answered in another page" in refused.json()["error"]
        assert site.out.read_bytes() == before
        assert post("/api/answer", {"index": 1, "skip": True, "version": 1}).status_code == 200
        assert lines(site.out)[-1] == {"id": 2, "text": TEXTS[1], "skipped": True}
        # a page silent for longer than the release time, whose text nobody took, has it still
        del beating.pages["open"]
        time.sleep(release + 0.2)
        assert post("/api/beat", {"client": "open", "index": 2}).json() == {"elsewhere": False}
        waiting = post("/api/next", {"client": "other"}).json()
        assert (waiting["item"], waiting["held"]) == (None, 1)
        # let go on pagehide, then back from the back-forward cache: its beat takes the text again
        assert post("/api/let-go", {"client": "open"}).status_code == 200
        assert 2 not in site.state()[1]
        assert post("/api/beat", {"client": "open", "index": 2}).json() == {"elsewhere": False}
        assert site.state()[1] == {2: "open"}
    finally:
        beating.close()
        site.close()


def test_a_stopped_browser_tab_lets_its_text_go_to_a_waiting_tab(tmp_path):
    from helpers import chromium
    from test_annotate import ARGS

    executable = chromium()  # skips, or fails under CI, where there is none
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    texts, beat, release = ["Ann met Bob", "Acme hired Ann"], 0.3, 1.5
    site = Site(tmp_path, "127.0.0.1", texts=texts, beat=beat, release=release)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=ARGS)
            tabs = []
            for _ in range(3):
                tab = browser.new_page()
                tab.goto(site.url + "/")
                tab.wait_for_selector("#text:not(:empty)")
                tabs.append(tab)
            first, second, third = tabs
            assert sorted([shown(first), shown(second)]) == sorted(texts)
            assert shown(third) == ("No text left for this page: the last 2 are held by 2 other open pages; a page "
                                    "that closes lets its text go within 1.5 s, to this page.")
            # the first tab stops, as under a closed laptop lid: its script paused, no pagehide, no beat
            lost, start = shown(first), time.monotonic()
            cdp = first.context.new_cdp_session(first)
            cdp.send("Debugger.enable")
            cdp.send("Debugger.pause")
            third.wait_for_function("t => document.getElementById('text').textContent === t", arg=lost,
                                    timeout=15_000)
            assert time.monotonic() - start > release - beat  # let go for its silence, not by a pagehide
            assert shown(second) != lost and len(site.state()[2]) == 2  # the beating tab kept its text
            # the first tab wakes: its next beat tells it that its text is elsewhere
            cdp.send("Debugger.resume")
            first.wait_for_function("document.getElementById('message').textContent.includes('another page')",
                                    timeout=15_000)
            assert first.text_content("#message") == (
                "This page was not heard from for over 1.5 s and its text went to another page: Enter still saves "
                "this page's answer; reload the page for a text of its own.")
            assert len(site.state()[2]) == 2
            browser.close()
    finally:
        site.close()


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
