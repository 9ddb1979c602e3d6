"""`tagtune annotate`: answers appended to OUT and on disk before the reply, a killed server
continued from OUT, a text's later answer winning, two pages never holding one text, bad requests
and bad files refused; then the page in a real headless chromium, marking spans with the mouse in
an English tweet and in Japanese after emoji (code points, not UTF-16 units), keys, a tagger's
suggestions, its beats, a kill and restart, a save over another page's answer it has not seen
refused until made again, and `tagtune train` on the answers. Screenshots go to
test-artifacts/."""

import json
import re
import shlex
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from tagtune.apps.annotate import (BEAT_SECONDS, MAX_KEYS, Annotator, Conflict, Text, rank, read_suggestions,  # noqa: E402
                                   suggest)
from tagtune.data.formats import read_examples  # noqa: E402
from tagtune import Span, TagtuneError  # noqa: E402
from test_serve import serving  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
from helpers import chromium  # noqa: E402  (the browser test's Chromium, wherever it is installed)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
JAPANESE = "🎉🎉 昨日は東京タワーに行った😀"  # two emoji before the span: UTF-16 offsets are 2 more


@contextmanager
def annotating(log, *args):
    """`python -m tagtune annotate ARGS` in a subprocess; yields (base URL, process)."""
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tagtune", "annotate", *map(str, args)], stdout=out,
                                   stderr=subprocess.STDOUT)
    with serving(process, log) as url:
        yield url, process


def page_client(url):
    """An httpx client for the server at ``url`` that sends what its page sends: the token written
    into the page."""
    page = httpx.get(url + "/", timeout=60)
    assert page.status_code == 200, page.text
    token = re.search(r'<meta name="tagtune-token" content="([^"]+)">', page.text).group(1)
    return httpx.Client(base_url=url, timeout=60, headers={"X-Tagtune-Token": token})


def kill(process):
    process.kill()  # SIGKILL: no clean-up of any kind
    process.wait()


def lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def answer(client, index, spans=None, skip=False):
    body = {"index": index, **({"skip": True} if skip else {"spans": spans or []})}
    response = client.post("/api/answer", json=body)
    assert response.status_code == 200, response.text
    return response.json()["progress"]


def next_item(client, who):
    response = client.post("/api/next", json={"client": who})
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- the server


def test_answers_are_on_disk_at_the_reply_and_a_killed_server_continues(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("Ann met Bob in Paris\n\nAcme hired Ann\n" + JAPANESE + "\nAcme hired Ann\nno names here\n",
                     encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    options = [texts, "--labels", "PER, ORG ,LOC", "--out", out, "--port", "0"]
    with annotating(tmp_path / "1.log", *options) as (url, process), page_client(url) as c:
        assert "4 texts (1 repeated text shown once)" in (tmp_path / "1.log").read_text()
        info = c.get("/api/info").json()
        assert [(x["label"], x["key"]) for x in info["labels"]] == [("PER", "1"), ("ORG", "2"), ("LOC", "3")]
        assert info["progress"] == {"total": 4, "done": 0, "skipped": 0, "left": 4,
                                    "spans": {"PER": 0, "ORG": 0, "LOC": 0}}
        assert info["train_command"] == shlex.join(["tagtune", "train", "--model", "BASE_MODEL", "--train", str(out),
                                                    "--out", str(tmp_path / "answers-tagger")])
        first = next_item(c, "a")["item"]
        assert (first["index"], first["id"], first["text"], first["status"]) == (0, 1, "Ann met Bob in Paris", "new")
        progress = answer(c, 0, [{"start": 0, "end": 3, "label": "PER", "text": "Ann"},
                                      {"start": 15, "end": 20, "label": "LOC"}])
        assert progress["done"] == 1 and progress["spans"] == {"PER": 1, "ORG": 0, "LOC": 1}
        # on disk as the reply arrives, in the format train reads
        assert lines(out) == [{"id": 1, "text": "Ann met Bob in Paris", "spans": [
            {"start": 0, "end": 3, "label": "PER", "text": "Ann"},
            {"start": 15, "end": 20, "label": "LOC", "text": "Paris"}]}]
        assert next_item(c, "a")["item"]["text"] == "Acme hired Ann"
        answer(c, 1, skip=True)
        assert lines(out)[-1] == {"id": 3, "text": "Acme hired Ann", "skipped": True}
        held = next_item(c, "a")["item"]
        assert held["text"] == JAPANESE and held["id"] == 4
        answer(c, 2, [{"start": 6, "end": 11, "label": "LOC", "text": "東京タワー"}])
        assert next_item(c, "a")["item"]["index"] == 3  # held by "a", never answered
        kill(process)
    assert [record["text"] for record in lines(out)] == ["Ann met Bob in Paris", "Acme hired Ann", JAPANESE]

    with annotating(tmp_path / "2.log", *options) as (url, process), page_client(url) as c:
        assert "answers.jsonl: 2 answered, 1 skipped, 1 to go" in (tmp_path / "2.log").read_text()
        info = c.get("/api/info").json()
        assert info["progress"] == {"total": 4, "done": 2, "skipped": 1, "left": 1,
                                    "spans": {"PER": 1, "ORG": 0, "LOC": 2}}
        assert info["recent"] == [0, 1, 2]
        # the unanswered text first, then the skipped one, then nothing
        assert next_item(c, "a")["item"]["text"] == "no names here"
        again = next_item(c, "b")["item"]
        assert (again["text"], again["status"]) == ("Acme hired Ann", "skipped")
        assert next_item(c, "c") == {"item": None, "progress": info["progress"], "held": 2}
        # going back: an earlier text shows its answer; answering it again appends a line that wins
        shown = c.get("/api/texts/0").json()["item"]
        assert shown["status"] == "answered" and [s["text"] for s in shown["spans"]] == ["Ann", "Paris"]
        answer(c, 0, [{"start": 0, "end": 3, "label": "PER"}, {"start": 8, "end": 11, "label": "PER"}])
        answer(c, 1, [{"start": 0, "end": 4, "label": "ORG"}, {"start": 11, "end": 14, "label": "PER"}])
        assert [s["text"] for s in c.get("/api/texts/0").json()["item"]["spans"]] == ["Ann", "Bob"]
        assert c.get("/api/info").json()["recent"] == [2, 0, 1]
        kill(process)
    assert len(lines(out)) == 5
    examples = read_examples(out)
    assert [(e.text, [(s.start, s.end, s.label) for s in e.spans]) for e in examples] == [
        (JAPANESE, [(6, 11, "LOC")]),
        ("Ann met Bob in Paris", [(0, 3, "PER"), (8, 11, "PER")]),
        ("Acme hired Ann", [(0, 4, "ORG"), (11, 14, "PER")]),
    ]


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """A server on 40 texts that two pages work through at once; yields (url, OUT, texts)."""
    folder = tmp_path_factory.mktemp("crowd")
    texts = [f"text {i}: Ann met Bob" if i % 2 else f"テキスト{i}😀 東京" for i in range(40)]
    (folder / "texts.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}, ensure_ascii=False) + "\n"
                                                for i, t in enumerate(texts)), encoding="utf-8")
    out = folder / "out.jsonl"
    with annotating(folder / "server.log", folder / "texts.jsonl", "--labels", "PER,LOC", "--out", out,
                    "--port", "0") as (url, _):
        yield url, out, texts


def test_two_pages_never_hold_the_same_text_and_no_answer_is_lost(crowd):
    url, out, texts = crowd
    got = {"a": [], "b": []}
    start = threading.Barrier(2)

    def work(who):
        with page_client(url) as c:
            start.wait()
            while True:
                item = next_item(c, who)["item"]
                if item is None:
                    return
                got[who].append(item["index"])
                end = len(item["text"])
                answer(c, item["index"], [{"start": end - 2, "end": end, "label": "LOC"}])

    pages = [threading.Thread(target=work, args=(who,)) for who in got]
    for page in pages:
        page.start()
    for page in pages:
        page.join(timeout=120)
    assert got["a"] and got["b"], got
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == list(range(40))
    records = lines(out)
    assert len(records) == 40 and sorted(r["id"] for r in records) == sorted(f"t{i}" for i in range(40))
    for record in records:
        assert record["spans"] == [{"start": len(record["text"]) - 2, "end": len(record["text"]), "label": "LOC",
                                    "text": record["text"][-2:]}]


BAD_REQUESTS = [
    ("not json", 400, "not valid JSON"),
    ([1, 2], 422, "expected a JSON object"),
    ({"index": 0, "spans": [], "extra": 1}, 422, "unknown field 'extra'"),
    ({"index": True, "spans": []}, 422, '"index" must be an integer'),
    ({"index": 99, "spans": []}, 404, "no text 99 (there are 40)"),
    ({"index": 0}, 422, 'missing field "spans"'),
    ({"index": 1, "text": "テキスト0😀 東京", "spans": []}, 409, "reload the page"),
    ({"index": 0, "spans": {}}, 422, '"spans" must be a list'),
    ({"index": 0, "skip": True, "spans": [[0, 1, "PER"]]}, 422, "a skipped text has no spans"),
    ({"index": 0, "spans": [[0, 1, "PER"]]}, 422, "spans[0] must be an object"),
    ({"index": 0, "spans": [{"start": 0, "end": 1, "label": "PER", "score": 1}]}, 422,
     "unknown field 'score'"),
    ({"index": 0, "spans": [{"start": "0", "end": 1, "label": "PER"}]}, 422, "start must be an integer"),
    ({"index": 0, "spans": [{"start": -1, "end": 1, "label": "PER"}]}, 422, "not within the text"),
    ({"index": 0, "spans": [{"start": 2, "end": 2, "label": "PER"}]}, 422, "or is empty"),
    # text 0 is "テキスト0😀 東京": 9 code points, 10 UTF-16 units
    ({"index": 0, "spans": [{"start": 7, "end": 10, "label": "LOC"}]}, 422,
     "not within the text (9 characters, counted in code points)"),
    ({"index": 0, "spans": [{"start": 8, "end": 9, "label": "LOC", "text": "東京"}]}, 422,
     "code points [8, 9) of the text are '京'"),
    ({"index": 0, "spans": [{"start": 0, "end": 1, "label": "ORG"}]}, 422,
     "unknown label 'ORG' (the labels are: PER, LOC)"),
    ({"index": 0, "spans": [{"start": 0, "end": 3, "label": "PER"},
                                           {"start": 2, "end": 4, "label": "LOC"}]}, 422, "spans overlap"),
    ({"index": 0, "spans": [{"start": 0, "end": 3, "label": "PER"}] * 2}, 422, "spans overlap"),
    ({"index": 0, "spans": [], "version": -1}, 422, '"version" must be an integer from 0, got the number -1'),
    ({"index": 0, "spans": [], "version": "0"}, 422, '"version" must be an integer'),
    ({"index": 0, "spans": [], "version": 7}, 409, 'answered in another page since this page showed it'),
]


@pytest.mark.parametrize("body, status, fragment", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_answers_are_refused_and_nothing_is_written(crowd, body, status, fragment):
    url, out, _ = crowd
    before = out.read_bytes() if out.exists() else b""
    with page_client(url) as c:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        response = c.post("/api/answer", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"], response.json()
        assert c.get("/api/texts/99").status_code == 404 and "error" in c.get("/api/texts/99").json()
    assert (out.read_bytes() if out.exists() else b"") == before


def test_pages_name_themselves(crowd):
    url, out, _ = crowd
    before = out.read_bytes()
    with page_client(url) as c:
        for body in ({}, {"client": ""}, {"client": 7}, {"client": "x", "index": 0}):
            response = c.post("/api/next", json=body)
            assert response.status_code == 422 and "error" in response.json(), response.text
        assert c.post("/api/let-go", content=b'{"client"', headers={"Content-Type": "application/json"}).status_code \
            == 400
        for body, status in (({"index": 0}, 422), ({"client": "x", "index": "0"}, 422), ({"client": "x", "index": 99},
                             404), ({"client": "x", "index": 0, "spans": []}, 422)):
            response = c.post("/api/beat", json=body)
            assert response.status_code == status and "error" in response.json(), response.text
        assert c.post("/api/beat", json={"client": "x", "index": None}).json() == {"elsewhere": False}
        assert (c.get("/nowhere").status_code, c.get("/nowhere").json()) == (404, {"error": "Not Found"})
        assert (c.get("/api/next").status_code, c.get("/api/next").json()) == (405, {"error": "Method Not Allowed"})
    assert out.read_bytes() == before


# --------------------------------------------------------------------------- files and options


def one_line_error(result, fragment):
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    assert fragment in lines[0], lines[0]


def test_bad_files_and_labels_are_one_line_errors(cli, tmp_path):
    good = tmp_path / "texts.txt"
    good.write_text("Ann met Bob\nAcme hired Ann\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run = lambda texts, *more: cli("annotate", texts, "--labels", "PER,ORG", "--out", out, "--port", "0", *more)

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Ann\nBob\nJosé\n".encode("latin-1"))
    one_line_error(run(latin1), f"{latin1}:3: not UTF-8 text (byte 0xe9)")
    broken = tmp_path / "texts.jsonl"
    broken.write_text('{"text": "Ann met Bob"}\n{"text": "Acme\n', encoding="utf-8")
    one_line_error(run(broken), f"{broken}:2: not valid JSON")
    no_text = tmp_path / "no-text.jsonl"
    no_text.write_text('{"text": "Ann met Bob"}\n\n{"body": "Acme"}\n', encoding="utf-8")
    one_line_error(run(no_text), f'{no_text}:3: expected a JSON object with a "text" string')
    one_line_error(run(tmp_path / "missing.txt"), "missing.txt: no such file")
    assert not out.exists()

    out.write_text('{"id": 1, "text": "Ann met Bob", "spans": [[0, 3, "PER"]]}\n{"id": 2, "text": "Acme hi',
                   encoding="utf-8")
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    one_line_error(run(good), f"{out}:2: invalid JSON")
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before  # never rewritten, not even touched
    out.write_text('{"id": 1, "text": "Ann met Bob", "spans": [[0, 3, "GPE"]]}\n', encoding="utf-8")
    one_line_error(run(good), f"{out}:1: spans[0] has unknown label 'GPE'")
    out.write_text('[{"text": "Ann met Bob", "spans": []}]\n', encoding="utf-8")
    one_line_error(run(good), f"{out}:1: a JSON list")
    out.unlink()

    one_line_error(cli("annotate", good, "--labels", "PER,,ORG", "--out", out), "label 2 is empty")
    one_line_error(cli("annotate", good, "--labels", "PER,ORG,PER", "--out", out), "'PER' is given twice")
    one_line_error(cli("annotate", good, "--out", out), "annotate needs --labels")
    assert not out.exists()


def test_out_is_locked_and_a_last_line_without_its_end_is_ended_before_the_next(tmp_path):
    from tagtune.apps.annotate import AnswerFile

    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "text": "a", "skipped": true}', encoding="utf-8")
    file = AnswerFile(out)
    try:
        with pytest.raises(TagtuneError, match="another tagtune annotate is writing to this file"):
            AnswerFile(out)
        file.append({"id": 2, "text": "b", "skipped": True})
    finally:
        file.close()
    assert lines(out) == [{"id": 1, "text": "a", "skipped": True}, {"id": 2, "text": "b", "skipped": True}]
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    AnswerFile(link).close()  # a link to a file is that file
    with pytest.raises(TagtuneError, match="not a regular file; --out must be a file or not exist yet"):
        AnswerFile(tmp_path)


def test_more_than_nine_labels_and_the_first_nine_get_keys():
    labels = [f"L{i}" for i in range(12)]
    info = Annotator([Text(0, 1, "a", 1)], labels, out=[]).info()
    assert [x["key"] for x in info["labels"]] == [str(k) for k in range(1, MAX_KEYS + 1)] + [None] * 3
    assert [x["label"] for x in info["labels"]] == labels


def test_a_held_text_is_free_again_when_let_go_or_its_page_is_silent():
    now = [0.0]
    answers = []
    annotator = Annotator([Text(i, i + 1, f"text {i}", i + 1) for i in range(3)], ["A"], answers,
                          clock=lambda: now[0], beat=1.0, release=3.0)
    assert annotator.next("a")["item"]["index"] == 0
    assert annotator.next("b")["item"]["index"] == 1
    assert annotator.next("a")["item"]["index"] == 0  # asking again lets its earlier text go first
    annotator.let_go("b")
    assert annotator.next("c")["item"]["index"] == 1
    assert annotator.next("d")["item"]["index"] == 2
    assert annotator.next("e") == {"item": None, "progress": annotator.progress(), "held": 3}
    # a and c beat; d is not heard from for longer than the release time: its text goes to e
    now[0] = 2.5
    assert annotator.beat("a", 0) == annotator.beat("c", 1) == {"elsewhere": False}
    now[0] = 3.0
    assert annotator.next("e")["item"] is None  # d silent 3 s: not yet
    now[0] = 3.1
    assert annotator.next("e")["item"]["index"] == 2
    # d comes back: its text stays with e, and d is told
    assert annotator.beat("d", 2) == {"elsewhere": True}
    assert (annotator.holder, annotator.held) == ({0: "a", 1: "c", 2: "e"}, {"a": 0, "c": 1, "e": 2})
    # every page silent: a beat gives a page its text back when no other page took it meanwhile
    now[0] = 20.0
    assert annotator.beat("a", 0) == {"elsewhere": False}
    annotator.let_go("c")
    assert annotator.beat("c", 1) == {"elsewhere": False}  # back from the back-forward cache after pagehide
    assert annotator.next("f")["item"]["index"] == 2  # e's, silent
    assert annotator.beat("e", 2) == {"elsewhere": True}
    assert annotator.beat("e", 1) == {"elsewhere": True}  # another page's text is not taken by naming it
    assert annotator.held == {"a": 0, "c": 1, "f": 2}
    # a late answer of a text another page holds is kept, and that page's hold ends
    shown = annotator.item(2)
    assert shown["version"] == 0
    annotator.answer(2, [Span(0, 4, "A")], version=shown["version"])
    assert answers == [{"id": 3, "text": "text 2", "spans": [{"start": 0, "end": 4, "label": "A", "text": "text"}]}]
    assert annotator.held == {"a": 0, "c": 1} and annotator.item(2)["version"] == 1
    # f's answer, given with the version it was shown, does not replace it: nothing is written
    with pytest.raises(Conflict) as refused:
        annotator.answer(2, None, version=0)
    assert (refused.value.status, refused.value.version) == (409, 1) and len(answers) == 1
    assert '"version": 1' in refused.value.message
    annotator.answer(2, None, version=1)  # named as the answer it replaces: written
    assert answers[-1] == {"id": 3, "text": "text 2", "skipped": True}
    assert annotator.beat("f", 2) == {"elsewhere": False} and "f" not in annotator.held  # answered: not taken back
    assert annotator.next("g")["item"] is None
    assert annotator.progress() == {"total": 3, "done": 0, "skipped": 1, "left": 2, "spans": {"A": 0}}


def test_texts_come_most_uncertain_first(suggesting_tagger):
    from tagtune import Tagger

    from test_select import brute_force_uncertainty

    assert rank([0.1, 0.0, 0.4, 0.5, 0.4]) == [3, 2, 4, 0, 1]  # file order among equals
    tagger = Tagger.load(suggesting_tagger)
    assert tagger.transitions is None  # no CRF: the brute force needs no transition scores
    texts = ["Merkel flew to Rome today", "zz qq", "Rome flew to Merkel today", "today"]
    spans, unsure = suggest(tagger, texts, ["person"], progress=False)
    # every tag path enumerated, on the model's logits, instead of the forward-backward under test
    logits, _ = tagger.unit_logits(texts)
    expected = [brute_force_uncertainty(x, tagger.labels, tagger.settings.scheme) for x in logits]
    assert len(set(round(u, 4) for u in expected)) > 2, expected  # the texts do differ
    assert unsure == pytest.approx(expected, abs=1e-9)
    assert rank(unsure) == sorted(range(len(texts)), key=lambda i: -expected[i])
    # the suggestions: the tagger's spans (Tagger.predict), those labelled person only
    predicted = [[(s.start, s.end, s.label) for s in row if s.label == "person"] for row in tagger.predict(texts)]
    assert [[(s.start, s.end, s.label) for s in row] for row in spans] == predicted
    assert any(predicted)


# --------------------------------------------------------------------------- suggestions from a file


def served(annotator):
    """(text, spans as (start, end, label), suggested) of every text ``annotator`` hands out, each
    skipped once shown."""
    shown = []
    while (item := annotator.next("a")["item"]) is not None:
        shown.append((item["text"], [(s["start"], s["end"], s["label"]) for s in item["spans"]], item["suggested"]))
        annotator.answer(item["index"], None)
    return shown


def test_a_files_spans_are_suggested_for_its_texts_with_annotates_labels_only(tmp_path):
    texts = [Text(i, i + 1, t, i + 1) for i, t in enumerate(["Ann met Bob in Paris", "Acme hired Ann",
                                                             "no names here", JAPANESE])]
    teacher = tmp_path / "teacher.jsonl"
    records = [
        {"id": 1, "text": "Acme hired Ann", "spans": [[0, 4, "ORG"], [11, 14, "PER"]], "source": "llm:t"},
        {"id": 2, "text": "Ann met Bob in Paris", "spans": [{"start": 0, "end": 3, "label": "PER", "text": "Ann"},
                                                           {"start": 15, "end": 20, "label": "GPE"}]},
        {"id": 3, "text": "not one of the texts", "spans": [[0, 3, "MISC"]]},
        {"id": 1, "text": "Acme hired Ann", "spans": [[0, 4, "ORG"]]},  # the id's later record wins
        {"id": 4, "text": JAPANESE, "spans": [[6, 11, "LOC"]]},
    ]
    teacher.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    found, dropped = read_suggestions(teacher, texts, ["PER", "ORG", "LOC"])
    assert dropped == {"GPE": 1}  # the MISC span's text is not one of the texts: not counted
    annotator = Annotator(texts, ["PER", "ORG", "LOC"], out=[], suggestions=found)
    assert served(annotator) == [("Ann met Bob in Paris", [(0, 3, "PER")], True),
                                 ("Acme hired Ann", [(0, 4, "ORG")], True),
                                 ("no names here", [], False),
                                 (JAPANESE, [(6, 11, "LOC")], True)]
    # a text skipped in an earlier run comes after the others, with its suggestions
    again = Annotator(texts, ["PER", "ORG", "LOC"], out=[], latest={0: None}, answered=[0], suggestions=found)
    assert [row[0] for row in served(again)] == ["Acme hired Ann", "no names here", JAPANESE, "Ann met Bob in Paris"]
    assert again.item(0)["spans"] == [{"start": 0, "end": 3, "label": "PER", "text": "Ann"}]

    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"text": "University of Tokyo", "spans": [[0, 19, "ORG"], [14, 19, "LOC"]]}\n',
                      encoding="utf-8")
    tokyo = [Text(0, 1, "University of Tokyo", 1)]
    with pytest.raises(TagtuneError, match=f"^{re.escape(str(nested))}:1: spans overlap: .*add --overlaps"):
        read_suggestions(nested, tokyo, ["ORG", "LOC"])
    assert read_suggestions(nested, tokyo, ["ORG"]) == ({0: [Span(0, 19, "ORG")]}, {"LOC": 1})
    assert read_suggestions(nested, tokyo, ["ORG", "LOC"], overlaps=True)[0] == {
        0: [Span(0, 19, "ORG"), Span(14, 19, "LOC")]}


def test_annotate_suggests_the_spans_tagtune_label_wrote(cli, tmp_path):
    pytest.importorskip("openai", reason="the llm extra is not installed (pip install -e '.[llm]')")
    from llm_server import LlmServer

    gold = {"Ann works at Acme in Paris.": [("Ann", "PER"), ("Acme", "ORG"), ("Paris", "LOC")],
            "Nothing to see here.": [], "Lee flew to Oslo.": [("Lee", "PER"), ("Oslo", "LOC")]}
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{t}\n" for t in gold), encoding="utf-8")
    teacher = tmp_path / "teacher.jsonl"
    with LlmServer(lambda text: [{"text": t, "label": label} for t, label in gold[text]]) as llm:
        result = cli("label", texts, "-o", teacher, "--labels", "PER,ORG,LOC", "--llm", llm.url, "--llm-model",
                     "teacher", "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "answers.jsonl"
    one_line_error(cli("annotate", texts, "--labels", "PER", "--suggestions", teacher, "--model", tmp_path,
                       "--out", out), "annotate takes --model or --suggestions, not both")
    assert not out.exists()

    options = [texts, "--labels", "PER,LOC", "--suggestions", teacher, "--out", out, "--port", "0"]
    with annotating(tmp_path / "a.log", *options) as (url, process), page_client(url) as c:
        assert (f"{teacher}: suggestions for 3 of the 3 texts, 4 spans; 1 span left out, their labels not in "
                "--labels (ORG 1)") in (tmp_path / "a.log").read_text()
        assert c.get("/api/info").json()["model"] == str(teacher)
        shown = {}
        while (item := next_item(c, "a")["item"]) is not None:
            shown[item["text"]] = [(item["text"][s["start"]:s["end"]], s["label"]) for s in item["spans"]]
            answer(c, item["index"], item["spans"])  # accepted as suggested
        kill(process)
    wanted = {text: [(t, label) for t, label in spans if label != "ORG"] for text, spans in gold.items()}
    assert list(shown.items()) == list(wanted.items())  # file order
    assert {e.text: [(e.text[s.start:s.end], s.label) for s in e.spans] for e in read_examples(out)} == wanted


# --------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def suggesting_tagger(tiny_bert, tmp_path_factory):
    """The tiny BERT trained in a few seconds to tag the first word of "X flew to Y today" as a
    person and the fourth as a place: a tagger whose suggestions the page shows."""
    import tagtune

    folder = tmp_path_factory.mktemp("suggesting")
    records = []
    for name in ["Obama", "Merkel", "Macron", "Trudeau", "Biden", "Sunak"]:
        for city in ["London", "Paris", "Berlin", "Tokyo", "Rome", "Madrid"]:
            text = f"{name} flew to {city} today"
            records.append({"text": text, "spans": [[0, len(name), "person"],
                                                     [text.index(city), text.index(city) + len(city), "place"]]})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tagtune.train(model=str(tiny_bert), train=str(folder / "train.jsonl"), out=str(folder / "tagger"), epochs=3,
                  lr=1e-2, batch_size=8, progress=False, device="cpu", bf16="off")
    return folder / "tagger"


@pytest.fixture(scope="module")
def tweet(tweets):
    """A real tweet with a person in it: (text, start, end) of the person."""
    for tokens, tags in tweets[400:]:
        text = " ".join(tokens)
        if "B-person" in tags and all(ord(c) < 0x2000 for c in text):
            first = tags.index("B-person")
            last = first
            while last + 1 < len(tags) and tags[last + 1] == "I-person":
                last += 1
            start = len(" ".join(tokens[:first])) + (first > 0)
            end = start + len(" ".join(tokens[first:last + 1]))
            if text.count(text[start:end]) == 1:
                return text, start, end
    raise AssertionError("no tweet with a person")


CHARACTER_BOXES = """([target, before]) => {
    // the boxes of the first and last UTF-16 unit of `target` (after `before`) in the shown text
    const root = document.getElementById('text');
    const at = root.textContent.indexOf(target, root.textContent.indexOf(before) + before.length);
    const box = (unit) => {
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (unit < node.length) {
                const range = document.createRange();
                range.setStart(node, unit);
                range.setEnd(node, unit + 1);
                const r = range.getBoundingClientRect();
                return {left: r.left, right: r.right, middle: r.top + r.height / 2};
            }
            unit -= node.length;
        }
    };
    return [box(at), box(at + target.length - 1)];
}"""


def drag(page, target, before=""):
    """Select ``target`` (its first occurrence after ``before``) with the mouse: press on the left
    edge of its first character, move, release on the right edge of its last."""
    first, last = page.evaluate(CHARACTER_BOXES, [target, before])
    marks = page.locator("#text mark").count()
    page.mouse.move(first["left"] + 1, first["middle"])
    page.mouse.down()
    page.mouse.move((first["left"] + last["right"]) / 2, last["middle"], steps=3)
    page.mouse.move(last["right"] - 1, last["middle"], steps=3)
    page.mouse.up()
    return marks


def marks(page):
    return page.eval_on_selector_all("#text mark", "ms => ms.map(m => [m.textContent, m.dataset.label, "
                                     "m.classList.contains('suggested')])")


def shown(page):
    return page.text_content("#text")


def press(page, key, wait_for_new_text=False):
    before = page.text_content("#meta")
    page.keyboard.press(key)
    if wait_for_new_text:
        page.wait_for_function("before => document.getElementById('meta').textContent !== before", arg=before)


def test_label_in_the_browser_then_train(tmp_path, tweet, suggesting_tagger, cli):
    CHROMIUM = chromium()  # skips, or fails under CI, where there is none
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    text, start, end = tweet
    person = text[start:end]
    records = [{"id": "tweet", "text": text}, {"id": "ja", "text": JAPANESE},
               {"id": "skip", "text": "nothing to see here"}, {"id": "suggested", "text": "Merkel flew to Rome today"},
               {"id": "later", "text": "Sunak flew to Tokyo today"}]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        with annotating(tmp_path / "1.log", texts, "--labels", "person,place", "--out", out, "--port", "0") as (
                url, process):
            page.goto(url + "/")
            page.wait_for_selector("#text:not(:empty)")
            # while open, the page beats with its text, carrying what its other requests carry
            with page.expect_request(lambda r: r.url.endswith("/api/beat"), timeout=3_000 * BEAT_SECONDS) as sent:
                pass
            beat = sent.value
            assert beat.post_data_json["index"] == 0 and len(beat.post_data_json["client"]) == 24
            assert beat.headers["content-type"] == "application/json" and beat.headers["x-tagtune-token"]
            assert beat.response().json() == {"elsewhere": False}
            assert page.eval_on_selector_all("#labels .label", "bs => bs.map(b => b.textContent)") == \
                ["1person0", "2place0"]
            # the tweet: a person marked with the mouse (the first label is chosen); an extra span undone
            assert shown(page) == text
            count = drag(page, person)
            page.wait_for_function(f"document.querySelectorAll('#text mark').length > {count}")
            assert marks(page) == [[person, "person", False]]
            other = next(word for word in text.split() if len(word) > 2 and text.count(word) == 1
                         and word not in person and person not in word)
            drag(page, other)
            assert len(marks(page)) == 2
            press(page, "z")
            assert marks(page) == [[person, "person", False]]
            assert shown(page) == text
            press(page, "Enter", wait_for_new_text=True)
            # the Japanese text, emoji first: key 2 chooses the place label, the mouse marks the span
            assert shown(page) == JAPANESE
            press(page, "2")
            drag(page, "東京タワー")
            page.wait_for_selector("#text mark")
            assert marks(page) == [["東京タワー", "place", False]]
            drag(page, "京タ")  # inside the span: refused on the page, nothing sent
            assert "overlaps" in page.text_content("#message")
            assert marks(page) == [["東京タワー", "place", False]]
            page.screenshot(path=str(ARTIFACTS / "annotate-ja.png"), full_page=True)
            press(page, "Enter", wait_for_new_text=True)
            assert shown(page) == "nothing to see here"
            press(page, "s", wait_for_new_text=True)
            assert shown(page) == "Merkel flew to Rome today"

            assert lines(out) == [
                {"id": "tweet", "text": text, "spans": [{"start": start, "end": end, "label": "person",
                                                         "text": person}]},
                {"id": "ja", "text": JAPANESE, "spans": [{"start": 6, "end": 11, "label": "place",
                                                          "text": "東京タワー"}]},
                {"id": "skip", "text": "nothing to see here", "skipped": True},
            ]
            assert JAPANESE.index("東京タワー") == 6
            assert len(JAPANESE[:6].encode("utf-16-le")) // 2 == 8  # where UTF-16 offsets would have put it
            port = url.rsplit(":", 1)[1]
            kill(process)

        # restarted on the same port, now with the tagger: its spans are suggestions to accept or fix
        with annotating(tmp_path / "2.log", texts, "--labels", "person,place", "--out", out, "--model",
                        suggesting_tagger, "--port", port, "--bf16", "off") as (url, process):
            page.reload()
            page.wait_for_selector("#text:not(:empty)")
            assert page.text_content("#counts").startswith("2 / 5 done · 1 skipped · 2 to go")
            # a second tab gets the other unanswered text; leaving it lets that text go to the first tab
            tab = browser.new_page(viewport={"width": 1000, "height": 760})
            tab.goto(url + "/")
            tab.wait_for_selector("#text:not(:empty)")
            assert {shown(page), shown(tab)} == {"Merkel flew to Rome today", "Sunak flew to Tokyo today"}
            tab.goto("about:blank")
            tab.close()
            done = set()
            while shown(page) in ("Merkel flew to Rome today", "Sunak flew to Tokyo today"):
                now = shown(page)
                suggested = marks(page)
                assert suggested and all(flag for _, _, flag in suggested), suggested
                if now.startswith("Merkel"):
                    page.screenshot(path=str(ARTIFACTS / "annotate.png"), full_page=True)
                    want = [(s, label) for s, label, _ in suggested]
                else:  # fix the suggestions: remove them by clicking, mark the place with the mouse
                    while page.locator("#text mark").count():
                        page.click("#text mark >> nth=0")
                    press(page, "2")
                    drag(page, "Tokyo")
                    page.wait_for_selector("#text mark")
                    want = [("Tokyo", "place")]
                done.add(now)
                press(page, "Enter", wait_for_new_text=True)
                record = lines(out)[-1]
                assert record["text"] == now
                assert [(s["text"], s["label"]) for s in record["spans"]] == want
            assert len(done) == 2
            assert shown(page) == "nothing to see here"  # skipped before: after every unanswered text
            press(page, "s", wait_for_new_text=True)
            assert "Every text has an answer" in shown(page)
            # back to the Japanese text: a smaller span replaces the earlier one
            for _ in range(5):
                press(page, "b", wait_for_new_text=True)
                if shown(page) == JAPANESE:
                    break
            assert marks(page) == [["東京タワー", "place", False]]
            page.click("#text mark")
            assert marks(page) == []
            press(page, "2")
            drag(page, "東京")
            page.wait_for_selector("#text mark")
            with page_client(url) as c:  # another page answers it meanwhile
                assert c.post("/api/answer", json={"index": 1, "skip": True}).status_code == 200
                command = c.get("/api/info").json()["train_command"]
            press(page, "Enter")  # not over an answer the page has not seen
            page.wait_for_function("document.getElementById('message').textContent.startsWith('Not saved')")
            assert lines(out)[-1] == {"id": "ja", "text": JAPANESE, "skipped": True}
            press(page, "Enter", wait_for_new_text=True)  # again: now it replaces that answer
            assert lines(out)[-1]["spans"] == [{"start": 6, "end": 8, "label": "place", "text": "東京"}]
            assert page.text_content("#command") == command
        browser.close()

    # the suggestions were accepted as they were: the tagger's own spans for that text
    from tagtune import Tagger

    (found,) = Tagger.load(suggesting_tagger, bf16="off").predict(["Merkel flew to Rome today"])  # as the server ran
    merkel = [(s.start, s.end, s.label) for s in found]
    assert merkel
    examples = {e.text: [(s.start, s.end, s.label) for s in e.spans] for e in read_examples(out)}
    assert examples == {text: [(start, end, "person")], JAPANESE: [(6, 8, "place")],
                        "Merkel flew to Rome today": merkel, "Sunak flew to Tokyo today": [(14, 19, "place")]}
    # the page's command trains on the answers as they are (one epoch here)
    argv = shlex.split(command)
    assert argv[:2] == ["tagtune", "train"] and argv[argv.index("--train") + 1] == str(out)
    result = cli(*argv[1:], "--epochs", "1", "--bf16", "off", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    trained = json.loads(result.stdout)
    config = json.loads((Path(trained["out"]) / "config.json").read_text())
    assert {"B-person", "B-place"} <= set(config["id2label"].values())
