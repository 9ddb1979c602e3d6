"""The documentation site: it builds with ``mkdocs build --strict`` (a broken link, a missing
anchor, a page outside the nav or a reference mkdocstrings cannot resolve fails it), the pages
made from the code say what the code does, and every code block of every page runs as written
(tests/docblocks.py says how)."""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from docblocks import DOCS, ROOT, demo_leftovers, doc_pages, json_values, read_page, run_page
from helpers import BROWSER_ARGS, chromium

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
    return out


def test_the_site_builds_strictly_with_every_page_in_the_nav(site):
    for page in doc_pages():
        html = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            html = site / page.relative_to(DOCS).parent / "index.html"
        assert html.is_file(), f"{page.relative_to(ROOT)} is not in the site"
    for name in ("train-speed", "predict-speed", "f1-seeds", "calibration"):
        assert (site / "img" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_reference_has_every_command_and_flag_of_the_parsers(site):
    from tagtune.apps.cli import build_parser

    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, parser in commands.choices.items():
        assert f"tagtune {name}</h2>" in re.sub(r"<a [^>]*>.*?</a>", "", html), f"no section for {name}"
        for action in parser._actions:
            if action.option_strings == ["-h", "--help"] or action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert f"<code>{option}" in html, f"tagtune {name} {option} is not in the reference"


def test_the_http_reference_is_the_servers_openapi_description(site):
    from tagtune.apps.serve import Limits, openapi_schema

    html = (site / "reference" / "http" / "index.html").read_text(encoding="utf-8")
    schema = openapi_schema(["PER", "ORG", "LOC"], Limits())
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in html
    for name in schema["components"]["schemas"]:
        assert f'id="{name.lower()}"' in html


def test_the_api_reference_documents_every_public_name(site):
    import tagtune

    html = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in tagtune.__all__:
        if name != "__version__":
            assert f'id="tagtune.{name}"' in html, f"tagtune.{name} has no entry in the API reference"


def test_screenshots_of_the_home_page_and_a_guide(site):
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            base = f"http://127.0.0.1:{server.server_address[1]}"
            for path, name in (("/", "docs-home.png"), ("/guides/japanese-keywords/", "docs-guide.png")):
                page.goto(base + path)
                page.wait_for_selector("article h1")
                assert page.title().endswith("tagtune")
                page.screenshot(path=str(ARTIFACTS / name), full_page=False)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert (ARTIFACTS / "docs-guide.png").stat().st_size > 10_000


# --- the pages' code blocks -------------------------------------------------------------------

PAGES = [p for p in doc_pages() if read_page(p).runnable]


def test_every_block_left_unrun_says_why_and_pages_have_runnable_blocks():
    for path in doc_pages():
        page = read_page(path)
        for block in page.blocks:
            assert block.skip is None or block.skip.strip(), f"{path}:{block.line}: 'not run:' without a reason"
        unrun = [b for b in page.blocks if b.language in ("sh", "python") and b.skip]
        assert len(unrun) <= len(page.runnable) + 2, f"{path}: most of its blocks are not run"
    assert any(p.name == "english-ner.md" for p in PAGES)


@pytest.fixture
def reader(tmp_path, tweets, request):
    """An empty folder with what the page's ``test-setup`` names."""
    page = read_page(request.param)
    work = tmp_path / "work"
    work.mkdir()
    if "wnut" in page.setup or "tagger" in page.setup:
        tagger = request.getfixturevalue("trained_tagger") if "tagger" in page.setup else None
        demo_leftovers(work, tweets, tagger)
    return page, work


@pytest.mark.parametrize("reader", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES], indirect=True)
def test_the_code_blocks_of_the_page_run(reader, stand_in_hub):
    page, work = reader
    results = run_page(page, work, stand_in_hub.url)
    check = CHECKS.get(page.path.relative_to(DOCS).as_posix())
    if check:
        check(results, work, stand_in_hub)


def _english_ner(results, work, hub):
    assert "model.safetensors" in hub.downloads("sentence-transformers/all-MiniLM-L6-v2")
    assert (work / "my-tagger" / "model.safetensors").is_file()
    printed = [v for r in results for v in json_values(r.stdout)]
    assert any({"precision", "recall", "f1"} <= set(v) for v in printed if isinstance(v, dict))
    for record in (v for v in printed if isinstance(v, dict) and "spans" in v):
        assert all(record["text"][s["start"]:s["end"]] == s["text"] for s in record["spans"])


def _japanese(results, work, hub):
    assert "vocab.txt" in hub.downloads("cl-tohoku/bert-base-japanese-v3")
    assert "tokenizer.json" in hub.downloads("sbintuitions/modernbert-ja-70m")
    answers = [v for r in results for v in json_values(r.stdout) if isinstance(v, dict) and "spans" in v]
    assert answers, "no answer was printed"
    for answer in answers:
        for span in answer["spans"]:
            assert answer["text"][span["start"]:span["end"]] == span["text"] and span["label"] == "KEY"
    configs = [json.loads(p.read_text()) for p in work.glob("*/config.json")]
    assert {"BertForTokenClassification", "ModernBertForTokenClassification"} <= \
        {c["architectures"][0] for c in configs}


def _nested(results, work, hub):
    nested, flat = [v for r in results for v in json_values(r.stdout) if isinstance(v, dict) and "spans" in v]
    for answer in (nested, flat):
        assert all(answer["text"][s["start"]:s["end"]] == s["text"] for s in answer["spans"])
    spans = [(s["start"], s["end"]) for s in nested["spans"]]
    assert any(a <= c and d <= b and (a, b) != (c, d) for a, b in spans for c, d in spans), "nothing nested"
    kept = [(s["start"], s["end"]) for s in flat["spans"]]
    assert all(b <= c for (_, b), (c, _) in zip(kept, kept[1:])), "flat spans overlap"


def _teacher(results, work, hub):
    records = [json.loads(line) for line in (work / "teacher.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 200 and {r["source"] for r in records} == {"llm:qwen2.5:7b"}
    assert all(r["text"][s["start"]:s["end"]] == s["text"] for r in records for s in r["spans"])
    rerun = [r for r in results if "200 already labelled" in r.stderr]
    assert rerun and "0 to ask" in rerun[0].stderr, "the second run asked again"
    assert len(json.loads((work / "review.json").read_text(encoding="utf-8"))) == 200
    scores = {name: json.loads((work / f"{name}-score.json").read_text()) for name in ("teacher", "student")}
    assert 0.7 < scores["teacher"]["f1"] < 0.95  # the stand-in answers one gold entity in five wrong
    assert scores["student"]["texts"] == scores["teacher"]["texts"] == 100
    assert any(line.startswith("teacher: precision") for r in results for line in r.stdout.splitlines())


CHECKS = {"guides/english-ner.md": _english_ner, "guides/japanese-keywords.md": _japanese,
          "guides/nested-spans.md": _nested, "guides/teacher.md": _teacher}
