"""A span tagger (--head span) on the web pages: `tagtune serve` answers its nested spans, a
request's overlap and min_score deciding which it keeps, and its page draws spans that nest on
levels below the text; `tagtune annotate --overlaps` keeps answers whose spans nest or overlap,
and `annotate --model` with a span tagger suggests its nested spans. Screenshots are written to
test-artifacts/."""

from __future__ import annotations

import json
import shlex

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from helpers import BROWSER_ARGS, chromium  # noqa: E402
from tagtune import Tagger  # noqa: E402
from tagtune.apps.annotate import rank  # noqa: E402
from tagtune.data.formats import read_examples  # noqa: E402
from test_annotate import ARTIFACTS, annotating, drag, lines, next_item, one_line_error, page_client  # noqa: E402
from test_serve import running_server  # noqa: E402
from test_span_nested import NESTED as NESTED_TEXTS  # noqa: E402

NESTED = NESTED_TEXTS[:6]  # an organisation over its place, a person over a first name (and no emoji)
TEXTS = [text for text, _ in NESTED]
NESTED_PAIR = "University of Tokyo is big"


@pytest.fixture(scope="module")
def span_tagger(tiny_bert, tmp_path_factory):
    """The tiny BERT with a span head trained on NESTED (all six texts in each step, a few seconds):
    a span tagger folder that gives their nested spans back."""
    from tagtune.training.config import TrainConfig
    from tagtune.training.loop import train

    folder = tmp_path_factory.mktemp("web-spans")
    data = folder / "nested.jsonl"
    data.write_text("".join(json.dumps({"text": text, "spans": [list(s) for s in spans]}) + "\n"
                            for text, spans in NESTED), encoding="utf-8")
    train(TrainConfig(model=str(tiny_bert), train=str(data), out=str(folder / "tagger"), head="span",
                      max_span_words=4, epochs=20, batch_size=6, bucket=False, lr=3e-2, warmup=0, progress=False,
                      device="cpu", bf16="off"))
    return folder / "tagger"


@pytest.fixture(scope="module")
def tagger(span_tagger):
    return Tagger.load(span_tagger, device="cpu", bf16="off")


@pytest.fixture(scope="module")
def server(span_tagger, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-spans") / "server.log"
    with running_server(span_tagger, "--device", "cpu", "--bf16", "off", log_path=log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def triples(spans):
    return [[(s["start"], s["end"], s["label"]) for s in row] for row in spans]


def expected(tagger, texts, overlap="nested", min_score=None):
    return [[(s.start, s.end, s.label) for s in row] for row in tagger.predict(texts, overlap, min_score)]


def extract(client, body):
    response = client.post("/v1/extract", json=body)
    assert response.status_code == 200, response.text
    return [r["spans"] for r in response.json()["results"]]


def crossing(row) -> bool:
    return any(a[0] < b[0] < a[1] < b[1] for a in row for b in row)


def nested(row) -> bool:
    return any(a != b and a[0] <= b[0] and b[1] <= a[1] for a in row for b in row)


# --------------------------------------------------------------------------- serve


def test_serve_answers_nested_spans_as_the_tagger_does(client, tagger):
    got = extract(client, {"texts": TEXTS})
    assert triples(got) == expected(tagger, TEXTS)
    assert triples(got)[0] == [(0, 19, "ORG"), (14, 19, "LOC")]  # learnt: an organisation over its place
    for text, row in zip(TEXTS, got):
        assert all(text[s["start"]:s["end"]] == s["text"] and 0.5 <= s["score"] <= 1 for s in row)
    assert triples(extract(client, {"texts": TEXTS, "overlap": "nested"})) == triples(got)


def test_the_request_overlap_and_min_score_decide_the_spans(client, tagger):
    flat = triples(extract(client, {"texts": TEXTS, "overlap": "flat"}))
    assert flat == expected(tagger, TEXTS, "flat")
    assert not any(nested(row) or crossing(row) for row in flat)
    # any: every span scoring at least min_score, a low one here: more than the nested reading
    every = extract(client, {"texts": TEXTS, "overlap": "any", "min_score": 0.001})
    assert triples(every) == expected(tagger, TEXTS, "any", 0.001)
    assert all(s["score"] >= 0.001 for row in every for s in row)
    assert {(0, 19, "ORG"), (14, 19, "LOC")} < set(triples(every)[0])
    # min_score is the floor the decoding reads, as predict's: a high one keeps the surest spans
    scores = sorted(s["score"] for row in extract(client, {"texts": TEXTS}) for s in row)
    floor = (scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2
    high = extract(client, {"texts": TEXTS, "min_score": floor})
    assert triples(high) == expected(tagger, TEXTS, "nested", floor)
    assert 0 < sum(map(len, high)) < len(scores) and all(s["score"] >= floor for row in high for s in row)


@pytest.mark.parametrize("overlap, fragment", [
    ("crossing", '"overlap" must be "nested", "flat" or "any", got \'crossing\''),
    (None, '"overlap" must be "nested", "flat" or "any", got null'),
    (["flat"], '"overlap" must be "nested", "flat" or "any", got an array'),
])
def test_a_bad_overlap_is_422(client, overlap, fragment):
    response = client.post("/v1/extract", json={"texts": [NESTED_PAIR], "overlap": overlap})
    assert response.status_code == 422 and response.json() == {"error": fragment}


def test_health_and_openapi_name_the_span_head(client, tagger):
    from openapi_spec_validator import validate

    health = client.get("/health").json()
    assert (health["head"], health["labels"], health["tags"]) == ("span", tagger.labels, tagger.labels)
    assert health["min_score"] == 0.5  # a span tagger's default
    schema = client.get("/openapi.json").json()
    validate(schema)
    assert "a span tagger: spans may nest or overlap" in schema["info"]["description"]
    schemas = schema["components"]["schemas"]
    overlap = schemas["ExtractRequest"]["properties"]["overlap"]
    assert overlap["enum"] == ["nested", "flat", "any"] and "nested" in overlap["description"]
    assert "head" in schemas["Health"]["required"]


# --------------------------------------------------------------------------- the page of serve


LEVELS = """root => [...root.querySelectorAll('.lv-bar')].map(bar => ({
    k: Number(bar.dataset.k), label: bar.dataset.label, start: Number(bar.dataset.start),
    end: Number(bar.dataset.end), title: bar.title, first: bar.classList.contains('lv-first'),
    piece: bar.parentElement.firstChild.textContent,
    box: (({left, right, top, bottom}) => ({left, right, top, bottom}))(bar.getBoundingClientRect())}))"""


def drawn_spans(page, root):
    """Each span drawn on levels: (its text from the pieces under its bars, label, start, end,
    title, the box around its bars)."""
    bars = page.eval_on_selector(root, LEVELS)
    spans = {}
    for bar in bars:
        span = spans.setdefault(bar["k"], {"text": "", "label": bar["label"], "start": bar["start"],
                                           "end": bar["end"], "title": bar["title"], "boxes": []})
        span["text"] += bar["piece"]
        span["boxes"].append(bar["box"])
    return [span for _, span in sorted(spans.items())]


def apart(a, b) -> bool:
    """The bars of two spans do not hide each other: on different heights, or side by side."""
    top = lambda s: min(box["top"] for box in s["boxes"])
    bottom = lambda s: max(box["bottom"] for box in s["boxes"])
    left = lambda s: min(box["left"] for box in s["boxes"])
    right = lambda s: max(box["right"] for box in s["boxes"])
    return top(a) >= bottom(b) - 1e-3 or top(b) >= bottom(a) - 1e-3 or left(a) >= right(b) or left(b) >= right(a)


def test_the_page_draws_nested_spans_on_levels(server, client):
    from playwright.sync_api import sync_playwright

    browser_path = chromium()  # skips, or fails under CI, where there is none
    text = TEXTS[-1]  # an organisation over its place, a person over a first name
    want = extract(client, {"texts": [text]})[0]
    assert nested(triples([want])[0]), want
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(server + "/")
        page.wait_for_selector("#legend .chip")
        assert page.is_visible("#overlap-choice") and "span tagger" in page.text_content("#model")
        page.fill("#text", text)
        page.click("#run")
        page.wait_for_selector("#result .lv-bar")
        drawn = drawn_spans(page, "#result")
        assert [(d["text"], d["label"], d["start"], d["end"]) for d in drawn] == \
            [(s["text"], s["label"], s["start"], s["end"]) for s in want]
        for d, s in zip(drawn, want):
            assert d["title"] == f"{s['label']} · score {s['score']:.3f}"
        for i, a in enumerate(drawn):
            for b in drawn[i + 1:]:
                assert apart(a, b), (a, b)
        # the text reads as typed: the bars and their labels add no characters
        assert page.text_content("#result") == text
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-nested.png"), full_page=True)
        # side by side only: highlighted as a token tagger's spans are
        page.select_option("#overlap", "flat")
        page.wait_for_selector("#result mark.ent")
        assert page.locator("#result .lv-bar").count() == 0
        marks = page.eval_on_selector_all("#result mark.ent", "ms => ms.map(m => m.dataset.label)")
        assert marks == [s[2] for s in triples(extract(client, {"texts": [text], "overlap": "flat"}))[0]]
        browser.close()


# --------------------------------------------------------------------------- annotate


def write_texts(path, texts):
    path.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    return path


def post_answer(client, index, spans):
    return client.post("/api/answer", json={"index": index, "spans": [dict(zip(("start", "end", "label"), s))
                                                                       for s in spans]})


def test_annotate_overlaps_keeps_nested_and_crossing_spans(tmp_path, cli):
    texts = write_texts(tmp_path / "texts.txt", TEXTS[:3])
    out = tmp_path / "answers.jsonl"
    options = [texts, "--labels", "ORG,LOC,PER,FIRST", "--out", out, "--port", "0"]
    with annotating(tmp_path / "1.log", *options) as (url, _), page_client(url) as c:
        # without --overlaps, as before: refused
        refused = post_answer(c, 0, [(0, 19, "ORG"), (14, 19, "LOC")])
        assert refused.status_code == 422 and refused.json()["error"].startswith("spans overlap: [0, 19)")
        assert "--overlaps" in refused.json()["error"] and out.read_bytes() == b""
        assert c.get("/api/info").json()["overlaps"] is False
    with annotating(tmp_path / "2.log", *options, "--overlaps") as (url, _), page_client(url) as c:
        info = c.get("/api/info").json()
        assert info["overlaps"] is True
        assert shlex.split(info["train_command"])[-2:] == ["--head", "span"]
        assert post_answer(c, 0, [(14, 19, "LOC"), (0, 19, "ORG"), (14, 19, "LOC")]).status_code == 200
        # crossing spans too (Bank of | of Lisbon)
        assert post_answer(c, 1, [(0, 7, "ORG"), (5, 14, "LOC")]).status_code == 200
        two_labels = post_answer(c, 2, [(0, 4, "FIRST"), (0, 4, "PER")])
        assert two_labels.status_code == 422
        assert two_labels.json()["error"] == ("spans mark the same characters [0, 4) 'John' with two labels, FIRST "
                                              "and PER; a span has one label")
        progress = post_answer(c, 2, [(0, 10, "PER"), (0, 4, "FIRST")]).json()["progress"]
        assert progress["spans"] == {"ORG": 2, "LOC": 2, "PER": 1, "FIRST": 1}
        assert next_item(c, "a")["item"] is None
        assert c.get("/api/texts/0").json()["item"]["spans"] == [
            {"start": 0, "end": 19, "label": "ORG", "text": "University of Tokyo"},
            {"start": 14, "end": 19, "label": "LOC", "text": "Tokyo"}]
    # the file holds both spans of each answer (a duplicate once) and reads back with overlaps
    assert [len(record["spans"]) for record in lines(out)] == [2, 2, 2]
    examples = read_examples(out, overlaps=True)
    assert [[(s.start, s.end, s.label) for s in e.spans] for e in examples] == [
        [(0, 19, "ORG"), (14, 19, "LOC")], [(0, 7, "ORG"), (5, 14, "LOC")], [(0, 4, "FIRST"), (0, 10, "PER")]]
    # continued without --overlaps: one line that says how to go on
    one_line_error(cli("annotate", *options), f"{out}:1: spans overlap: [0, 19) 'University of Tokyo' and "
                                              "[14, 19) 'Tokyo'; the answers were given with --overlaps: add "
                                              "--overlaps to go on with them")


def test_annotate_with_a_span_tagger_suggests_nested_spans_most_uncertain_first(tmp_path, span_tagger, tagger):
    texts = write_texts(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "answers.jsonl"
    with annotating(tmp_path / "1.log", texts, "--out", out, "--model", span_tagger, "--port", "0", "--device",
                    "cpu", "--bf16", "off", "--quiet") as (url, _), page_client(url) as c:
        assert "span tagger" in (tmp_path / "1.log").read_text()
        info = c.get("/api/info").json()
        assert info["overlaps"] is True and [x["label"] for x in info["labels"]] == tagger.labels
        assert shlex.split(info["train_command"])[-2:] == ["--head", "span"]
        order = [next_item(c, f"page{k}")["item"] for k in range(len(TEXTS))]
    spans = tagger.predict(TEXTS, "nested")
    assert [item["index"] for item in order] == rank(tagger.uncertainty(TEXTS, "nested"))
    for item in order:
        assert item["suggested"] == bool(spans[item["index"]])
        assert [(s["start"], s["end"], s["label"]) for s in item["spans"]] == \
            [(s.start, s.end, s.label) for s in spans[item["index"]]]
    assert any(nested([(s["start"], s["end"]) for s in item["spans"]]) for item in order)


def test_the_annotate_page_marks_a_span_inside_another(tmp_path):
    from playwright.sync_api import sync_playwright

    browser_path = chromium()  # skips, or fails under CI, where there is none
    texts = write_texts(tmp_path / "texts.txt", ["We met at the University of Tokyo in May"])
    out = tmp_path / "answers.jsonl"
    with sync_playwright() as p, annotating(tmp_path / "1.log", texts, "--labels", "ORG,LOC", "--out", out,
                                            "--port", "0", "--overlaps") as (url, _):
        browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(url + "/")
        page.wait_for_selector("#text:not(:empty)")
        assert page.is_visible("#overlaps-hint")
        drag(page, "University of Tokyo")  # ORG, the first label
        page.wait_for_selector("#text mark")
        page.keyboard.press("2")
        drag(page, "Tokyo")  # inside it: marked too, both drawn on levels
        page.wait_for_selector("#text .lv-bar")
        drawn = drawn_spans(page, "#text")
        assert [(d["text"], d["label"]) for d in drawn] == [("University of Tokyo", "ORG"), ("Tokyo", "LOC")]
        assert apart(*drawn) and page.text_content("#text") == "We met at the University of Tokyo in May"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate-nested.png"), full_page=True)
        drag(page, "Tokyo")  # the same span again: not added twice
        assert "already" in page.text_content("#message") and len(drawn_spans(page, "#text")) == 2
        # removing the outer span leaves the inner one, highlighted as a lone span is
        page.click("#text .lv-bar[data-label=ORG].lv-first")
        assert page.eval_on_selector_all("#text mark", "ms => ms.map(m => [m.textContent, m.dataset.label])") == \
            [["Tokyo", "LOC"]]
        page.keyboard.press("1")
        drag(page, "University of Tokyo")
        page.wait_for_selector("#text .lv-bar")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('message').textContent.startsWith('Saved')")
        browser.close()
    assert lines(out)[-1]["spans"] == [{"start": 14, "end": 33, "label": "ORG", "text": "University of Tokyo"},
                                       {"start": 28, "end": 33, "label": "LOC", "text": "Tokyo"}]
    (example,) = read_examples(out, overlaps=True)
    assert [(s.start, s.end, s.label) for s in example.spans] == [(14, 33, "ORG"), (28, 33, "LOC")]
