"""The page at / of `tagtune serve` in a real headless chromium: typed text comes back with the
server's spans highlighted, English and Japanese, emoji before the entities, user text never parsed
as HTML. Screenshots are written to test-artifacts/."""

import re
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import BROWSER_ARGS, chromium  # noqa: E402
from test_serve import running_server  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
JAPANESE = ["🎉🎉 Barack Obama と London で会った", "😀😀 Barack Obama と会いました",
            "🎉🎉 Obama 大統領が London を訪問した", "iPhone を買った 🎉 Barack Obama も使う"]


@pytest.fixture(scope="module")
def browser_path():
    return chromium()  # skips, or fails under CI, where there is none


@pytest.fixture(scope="module")
def server(browser_path, trained_tagger, tmp_path_factory):
    with running_server(trained_tagger, log_path=tmp_path_factory.mktemp("page") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(server, browser_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(server + "/")
        page.wait_for_selector("#legend .chip")
        yield page
        browser.close()


def server_spans(server, text):
    response = httpx.post(server + "/v1/extract", json={"texts": [text]}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["spans"]


def submit(page, text, keyboard=False):
    page.fill("#text", text)
    page.evaluate("document.getElementById('status').textContent = ''")
    if keyboard:
        page.press("#text", "Control+Enter")
    else:
        page.click("#run")
    page.wait_for_function("/span/.test(document.getElementById('status').textContent)", timeout=60_000)
    marks = page.eval_on_selector_all("#result mark.ent", """marks => marks.map(m => ({
        text: m.querySelector('.ent-text').textContent, label: m.dataset.label,
        shown: m.querySelector('.ent-label').textContent, title: m.title,
        background: getComputedStyle(m).backgroundColor}))""")
    shown_text = page.evaluate("""() => {
        const copy = document.getElementById('result').cloneNode(true);
        copy.querySelectorAll('.ent-label').forEach(n => n.remove());
        return copy.textContent; }""")
    return marks, shown_text


def assert_page_matches_server(page, server, text, keyboard=False):
    want = server_spans(server, text)
    marks, shown_text = submit(page, text, keyboard)
    assert shown_text == text
    assert [(m["text"], m["label"]) for m in marks] == [(s["text"], s["label"]) for s in want]
    for mark, span in zip(marks, want):
        assert mark["shown"] == span["label"]
        assert span["label"] in mark["title"]
        shown_score = float(re.search(r"score (\d\.\d{3})", mark["title"]).group(1))
        # the page's request may be batched with others: the same score to float precision, shown to 3 places
        assert abs(shown_score - span["score"]) <= 0.0005 + 1e-6, (mark["title"], span["score"])
    legend = dict(page.eval_on_selector_all("#legend .chip", "cs => cs.map(c => [c.dataset.label, "
                                            "getComputedStyle(c).backgroundColor])"))
    for mark in marks:  # each highlight has its label's legend colour
        assert mark["background"] == legend[mark["label"]]
    return want


def test_english_tweet(page, server, tweets):
    candidates = [" ".join(tokens) for tokens, _ in tweets[600:800]]
    text = next((t for t in candidates if len(server_spans(server, t)) >= 2), None)
    assert text, "the trained tagger should find two entities in one of 200 tweets"
    want = assert_page_matches_server(page, server, text)
    assert len(want) >= 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-en.png"), full_page=True)


def test_japanese_with_emoji_before_the_entities(page, server):
    text = next((t for t in JAPANESE if server_spans(server, t)), None)
    assert text, "the tagger should find the names in one of the Japanese sentences"
    want = assert_page_matches_server(page, server, text, keyboard=True)
    # an emoji before the first entity: its UTF-16 and code point offsets differ
    assert any(ord(c) > 0xFFFF for c in text[:want[0]["start"]])
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "serve-page-ja.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_text_is_never_parsed_as_html(page, server):
    text = 'Obama <b>bold</b> <img src=x onerror="document.title=\'pwned\'"> & London'
    assert_page_matches_server(page, server, text)
    assert page.eval_on_selector_all("#result b, #result img", "n => n.length") == 0
    assert page.title() == "tagtune"


def test_errors_are_shown(page):
    page.fill("#text", "x" * 10_001)  # over the default 10,000 characters per text
    page.click("#run")
    page.wait_for_selector("#error", state="visible")
    assert "413" in page.text_content("#error") and "limit" in page.text_content("#error")


JA_WORDS = ["大阪", "東京タワー", "港区", "ＡＢＣ株式会社", "京都", "下京区", "富士山", "名古屋城", "北海道大学", "横浜"]
JA_LABELS = ["地名", "組織名"]
ONE_LINE = """marks => marks.map(mark => {
    // the vertical middle of every character of the span and of its label: on one line, they
    // lie within a fraction of a line of each other
    const middle = rect => rect.top + rect.height / 2;
    const middles = [];
    const inner = mark.querySelector('.ent-text');
    const text = inner.firstChild;
    const range = document.createRange();
    for (let i = 0; i < text.length; i++) {
        range.setStart(text, i);
        range.setEnd(text, i + 1);
        const rect = range.getBoundingClientRect();
        if (rect.width > 0) middles.push(middle(rect));
    }
    middles.push(middle(mark.querySelector('.ent-label').getBoundingClientRect()));
    return {text: inner.textContent, rects: inner.getClientRects().length,
            spread: Math.max(...middles) - Math.min(...middles)};
})"""


def test_japanese_spans_never_break_across_lines(page):
    """Spans of a long Japanese text in a phone-wide window: every highlighted span, with its label,
    sits on one line (CJK text may break between any two characters, but never inside a span)."""
    sentence = "昨日は{}から{}まで歩き、{}の近くで{}の人に会った。"
    text, spans, k = "", [], 0
    while len(spans) < 40:
        words = [JA_WORDS[(k + i) % len(JA_WORDS)] for i in range(4)]
        start = len(text)
        text += sentence.format(*words)
        at = start
        for i, word in enumerate(words):
            at = text.index(word, at)
            spans.append({"start": at, "end": at + len(word), "label": JA_LABELS[(k + i) % 2], "text": word,
                          "score": 0.9})
            at += len(word)
        k += 1

    def answer(route):
        route.fulfill(json={"results": [{"spans": spans}]})

    page.set_viewport_size({"width": 360, "height": 900})
    page.route("**/v1/extract", answer)
    page.evaluate("""labels => labels.forEach(label => {
        const c = chip(label); c.dataset.added = "1"; el("legend").append(c); })""",
                  ["固有表現（地名・組織名・人名）"])
    try:
        marks, shown_text = submit(page, text)
        assert shown_text == text and [m["text"] for m in marks] == [s["text"] for s in spans]
        lines = page.eval_on_selector_all("#result mark.ent", ONE_LINE)
        result_lines = page.evaluate("Math.round(document.getElementById('result').getBoundingClientRect().height"
                                     " / parseFloat(getComputedStyle(document.getElementById('result')).lineHeight))")
        assert result_lines >= 10  # the text does wrap, many times
        line_height = page.evaluate("parseFloat(getComputedStyle(document.getElementById('result')).lineHeight)")
        broken = [line for line in lines if line["rects"] != 1 or line["spread"] > line_height / 3]
        assert broken == [], broken
        chips = page.eval_on_selector_all("#legend .chip", """cs => cs.map(c => {
            const range = document.createRange(); range.selectNodeContents(c);
            return [c.textContent, range.getClientRects().length]; })""")
        assert chips and all(count == 1 for _, count in chips), chips
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-ja.png"), full_page=True)
    finally:
        page.unroute("**/v1/extract")
        page.evaluate("document.querySelectorAll('#legend [data-added]').forEach(c => c.remove())")
        page.set_viewport_size({"width": 1000, "height": 640})
