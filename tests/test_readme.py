"""The README's examples run as written, as the documentation pages' do (tests/docblocks.py says
how): its blocks run in order in an empty folder holding what ``make demo`` leaves, with
``tagtune`` on PATH as ``source .venv/bin/activate`` puts it there."""

from __future__ import annotations

import ast
import json
import re

from docblocks import ROOT, demo_leftovers, json_values, read_page, run_page

README = ROOT / "README.md"


def test_the_readme_is_short_and_links_into_the_site():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_the_readme_blocks_run_and_the_shown_spans_are_found(stand_in_hub, tweets, trained_tagger, tmp_path):
    page = read_page(README)
    work = tmp_path / "work"
    work.mkdir()
    demo_leftovers(work, tweets, trained_tagger)
    results = run_page(page, work, stand_in_hub.url)

    text = README.read_text(encoding="utf-8")
    printed = [v for r in results for v in json_values(r.stdout) if isinstance(v, dict)]
    shown = [json.loads(block) for block in re.compile(r"^```json\n(.*?)^```$", re.M | re.S).findall(text)]
    assert len(shown) == 2, "the keyword example's answer and the nested one's"
    for answer_shown in shown:  # the spans each example shows are the ones its commands print
        answer = next(v for v in printed if v.get("text") == answer_shown["text"])
        assert [(s["start"], s["end"], s["label"], s["text"]) for s in answer["spans"]] == \
            [(s["start"], s["end"], s["label"], s["text"]) for s in answer_shown["spans"]]
    nested = [(s["start"], s["end"]) for s in shown[1]["spans"]]
    assert any(a <= c and d <= b and (a, b) != (c, d) for a, b in nested for c, d in nested), "nothing nested"
    assert "model.safetensors" in stand_in_hub.downloads("sentence-transformers/all-MiniLM-L6-v2")
    evaluation = next(v for v in printed if {"precision", "recall", "f1", "support"} <= set(v))
    assert evaluation["support"] > 0 and 0 <= evaluation["f1"] <= 1
    teacher, student = [v for v in printed if {"f1", "texts", "unscored"} <= set(v)]
    assert teacher["texts"] == student["texts"] == 100  # the gold test tweets, each paired
    assert 0.6 < teacher["f1"] < 1  # the stand-in teacher answers gold with one entity in five wrong
    assert student["support"] == teacher["support"] > 0 and 0 <= student["f1"] <= 1  # the same gold spans
    echoed = next(v for v in printed if v.get("text") == "Barack Obama visited Lisbon")
    for span in echoed["spans"]:
        assert echoed["text"][span["start"]:span["end"]] == span["text"]
    # pushed to the Hub, then downloaded back from it by the spaCy component: the same spans
    assert "model.safetensors" in stand_in_hub.downloads("your-name/wnut-minilm")
    ents, n_spans = ast.literal_eval(next(r.stdout for r in results if r.stdout.startswith("([")))
    assert ents == [(s["text"], s["label"]) for s in echoed["spans"]] and n_spans == len(ents)
