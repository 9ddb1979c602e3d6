"""tagtune label: a teacher model's entities placed into spans (tagtune.data.teacher), and the
command against a stand-in OpenAI-compatible server (tests/llm_server.py) through the real
``openai`` client: structured and plain replies, retries (429 with Retry-After, 500, a dropped
connection, a timeout), malformed and hallucinated answers, Japanese, the output formats, the
cache, a kill -9 and a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import tagtune
from llm_server import Fault, LlmServer
from tagtune.data.formats import read_examples
from tagtune.data.teacher import (ReplyError, cache_key, parse_reply, pick_examples, place, read_guide, request,
                                  response_format)
from tagtune.errors import TagtuneError
from tagtune.spans import Example, Span

pytest.importorskip("openai", reason="the llm extra is not installed (pip install -e '.[llm]')")

LABELS = ["PER", "ORG", "LOC"]


def spans_of(text, spans):
    return [(text[s.start:s.end], s.label) for s in spans]


# --------------------------------------------------------------------------- the pure parts


def test_every_occurrence_is_placed_on_whole_words_and_japanese_as_substrings():
    text = "Ann met Anna and Ann again in Paris."
    spans, dropped = place(text, [{"text": "Ann", "label": "PER"}, {"text": " Paris ", "label": "LOC"}], LABELS)
    assert [(s.start, s.end) for s in spans] == [(0, 3), (17, 20), (30, 35)]
    assert spans_of(text, spans) == [("Ann", "PER"), ("Ann", "PER"), ("Paris", "LOC")]
    assert dropped.total() == 0
    ja = "東京都の東京タワーでソニーが発表した。"
    spans, dropped = place(ja, [{"text": "東京", "label": "LOC"}, {"text": "ソニー", "label": "ORG"}], LABELS)
    assert spans_of(ja, spans) == [("東京", "LOC"), ("東京", "LOC"), ("ソニー", "ORG")]
    assert [s.start for s in spans] == [0, 4, 10]


def test_what_is_not_in_the_text_not_asked_for_or_malformed_is_dropped_and_counted():
    text = "Ann works at Acme."
    items = [{"text": "Atlantis", "label": "LOC"}, {"text": "Acme", "label": "COMPANY"}, {"text": "Ann"},
             "Ann", {"text": "", "label": "PER"}, {"text": "Acm", "label": "ORG"}, {"text": "Ann", "label": "PER"}]
    spans, dropped = place(text, items, LABELS)
    assert spans_of(text, spans) == [("Ann", "PER")]
    assert (dropped.absent, dropped.unasked, dropped.malformed, dropped.overlapping) == (2, 1, 3, 0)
    assert "Atlantis" in dropped.examples["absent"] and "COMPANY" in dropped.examples["unasked"]


def test_overlaps_longest_wins_for_the_token_head_and_are_kept_for_the_span_head():
    text = "The University of Tokyo hired Ann Lee."
    items = [{"text": "Tokyo", "label": "LOC"}, {"text": "University of Tokyo", "label": "ORG"},
             {"text": "Ann", "label": "PER"}, {"text": "Ann Lee", "label": "PER"}, {"text": "Ann Lee", "label": "ORG"}]
    flat, dropped = place(text, items, LABELS)
    assert spans_of(text, flat) == [("University of Tokyo", "ORG"), ("Ann Lee", "PER")]
    assert dropped.overlapping == 3
    nested, dropped = place(text, items, LABELS, overlaps=True)
    assert spans_of(text, nested) == [("University of Tokyo", "ORG"), ("Tokyo", "LOC"), ("Ann", "PER"),
                                      ("Ann Lee", "PER")]
    assert dropped.overlapping == 1  # the same characters keep the label named first


@pytest.mark.parametrize("content", [
    '{"entities": [{"text": "Ann", "label": "PER"}]}',
    'Sure! Here it is:\n```json\n{"entities": [{"text": "Ann", "label": "PER"}]}\n```\nAnything else?',
    '<think>Ann is a {person}.</think>\n{"entities": [{"text": "Ann", "label": "PER"}]}',
    'The answer is {"entities": [{"text": "Ann", "label": "PER"}]} as asked.',
    '[{"text": "Ann", "label": "PER"}]',
])
def test_the_reply_json_is_found_in_bare_fenced_and_wrapped_replies(content):
    assert parse_reply(content) == [{"text": "Ann", "label": "PER"}]


@pytest.mark.parametrize("content", [None, "", "no entities here", '{"entities": [{"text": "Ann"', '{"names": []}'])
def test_a_reply_without_the_entities_json_is_a_reply_error(content):
    with pytest.raises(ReplyError):
        parse_reply(content)


def test_the_request_has_the_guide_the_examples_the_text_last_and_a_json_schema():
    guide = {"PER": "a person's name", "ORG": "a company or team"}
    shown = [Example("Acme hired Ann.", [Span(0, 4, "ORG"), Span(11, 14, "PER")])]
    body = request("teacher", "Bob met Ann.", ["PER", "ORG"], guide, shown)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert "PER: a person's name" in body["messages"][0]["content"]
    assert json.loads(body["messages"][2]["content"]) == {"entities": [{"text": "Acme", "label": "ORG"},
                                                                        {"text": "Ann", "label": "PER"}]}
    assert body["messages"][-1]["content"] == "Bob met Ann."
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["entities"]["items"]["properties"]["label"]["enum"] == ["PER", "ORG"]
    assert body["response_format"] == response_format(["PER", "ORG"])
    assert "response_format" not in request("teacher", "x", ["PER"], structured=False)
    assert cache_key(body) == cache_key(json.loads(json.dumps(body)))
    assert cache_key(body) != cache_key(request("other", "Bob met Ann.", ["PER", "ORG"], guide, shown))


def test_examples_first_cover_every_label_then_fill_in_file_order():
    examples = [Example("a", []), Example("b", [Span(0, 1, "PER")]), Example("c", [Span(0, 1, "PER")]),
                Example("d", [Span(0, 1, "LOC"), Span(0, 1, "X")]), Example("e", [])]
    picked = pick_examples(examples, ["PER", "LOC"], 3)
    assert [e.text for e in picked] == ["a", "b", "d"]
    assert picked[2].spans == [Span(0, 1, "LOC")]  # a label not asked for is left out
    assert [e.text for e in pick_examples(examples, ["PER", "LOC"], 1)] == ["b"]
    assert pick_examples(examples, ["PER"], 0) == []


def test_the_guide_is_a_label_and_a_sentence_a_line(tmp_path):
    path = tmp_path / "guide.txt"
    path.write_text("# the labels\nPER: a person's name\n\nORG : a company: or a team\n", encoding="utf-8")
    assert read_guide(path) == {"PER": "a person's name", "ORG": "a company: or a team"}
    path.write_text("PER: a\nno colon here\n", encoding="utf-8")
    with pytest.raises(TagtuneError, match=r"guide.txt:2: expected 'LABEL: "):
        read_guide(path)
    path.write_text("PER: a\nPER: b\n", encoding="utf-8")
    with pytest.raises(TagtuneError, match="guide.txt:2: the label 'PER' is described twice"):
        read_guide(path)


# --------------------------------------------------------------------------- the command

GOLD = {
    "Ann works at Acme in Paris.": [("Ann", "PER"), ("Acme", "ORG"), ("Paris", "LOC")],
    "Bob met Ann in Berlin.": [("Bob", "PER"), ("Ann", "PER"), ("Berlin", "LOC")],
    "東京でソニーが新製品を発表した。": [("東京", "LOC"), ("ソニー", "ORG")],
    "Nothing to see here.": [],
    "Acme and Initech merged.": [("Acme", "ORG"), ("Initech", "ORG")],
    "Lee flew to Oslo.": [("Lee", "PER"), ("Oslo", "LOC")],
}


def teacher(text):
    return [{"text": t, "label": label} for t, label in GOLD.get(text, [])]


@pytest.fixture
def llm():
    with LlmServer(teacher) as server:
        yield server


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("".join(f"{t}\n" for t in GOLD), encoding="utf-8")
    return path


def label_args(texts, out, llm, *more):
    return ["label", texts, "-o", out, "--labels", ",".join(LABELS), "--llm", llm.url, "--llm-model", "teacher",
            *more]


def expected(path):
    """(id, text) -> the gold spans as (text, label), for the texts of ``path``."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return {(n, t): GOLD[t] for n, t in enumerate(lines, 1) if t}


def answers(out):
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {(r["id"], r["text"]): [(s["text"], s["label"]) for s in r["spans"]] for r in records}, records


def test_labels_every_text_as_tagtune_jsonl_that_train_reads_and_a_rerun_sends_nothing(cli, llm, texts, tmp_path):
    out = tmp_path / "teacher.jsonl"
    result = cli(*label_args(texts, out, llm))
    assert result.returncode == 0, result.stderr
    found, records = answers(out)
    assert found == expected(texts)
    assert all(r["source"] == "llm:teacher" for r in records)
    assert len(llm.requests) == len(GOLD)
    assert all(r["response_format"]["type"] == "json_schema" for r in llm.requests)
    examples = read_examples(out)  # train's reader, "id" and "source" beside the spans
    assert {e.text: spans_of(e.text, e.spans) for e in examples} == GOLD
    assert "tokens" in result.stderr and f"{len(GOLD)} records written" in result.stderr

    again = cli(*label_args(texts, out, llm))
    assert again.returncode == 0, again.stderr
    assert len(llm.requests) == len(GOLD)  # nothing sent
    assert out.read_text(encoding="utf-8").count("\n") == len(GOLD)
    out.unlink()  # OUT gone, the cache beside it still answers
    cli(*label_args(texts, out, llm, "--quiet"))
    assert len(llm.requests) == len(GOLD) and answers(out)[0] == expected(texts)


def test_the_python_api_labels_and_scores_the_labels_against_gold(llm, texts, tmp_path):
    import tagtune

    out = tmp_path / "teacher.jsonl"
    tally = tagtune.label(texts, out, labels=",".join(LABELS), llm=llm.url, llm_model="teacher", progress=False)
    assert (tally.asked, tally.written, tally.spans) == (len(GOLD), len(GOLD), 12)
    assert answers(out)[0] == expected(texts)
    gold = tmp_path / "gold.jsonl"  # the gold spans but Paris: the teacher's Paris is one false positive
    gold.write_text("".join(json.dumps({"text": text, "spans": [[text.index(t), text.index(t) + len(t), label]
                                                                for t, label in spans if t != "Paris"]}) + "\n"
                            for text, spans in GOLD.items()), encoding="utf-8")
    scores = tagtune.score_files(gold, out)
    assert (scores["precision"], scores["recall"], scores["support"], scores["texts"]) == (11 / 12, 1.0, 11, len(GOLD))
    assert scores["per_label"]["LOC"]["precision"] == 3 / 4


@pytest.mark.parametrize("mode", ["ignore", "refuse"])
def test_a_server_without_structured_output_is_read_from_its_plain_reply(cli, texts, tmp_path, mode):
    out = tmp_path / "teacher.jsonl"
    with LlmServer(teacher, response_format=mode) as llm:
        result = cli(*label_args(texts, out, llm, "--concurrency", "3"))
        assert result.returncode == 0, result.stderr
        assert answers(out)[0] == expected(texts)
        if mode == "refuse":  # the requests in flight when the first is refused are asked again too
            assert result.stderr.count("does not take a JSON schema (response_format is not supported") == 1
            refused = [r for r in llm.requests if "response_format" in r]
            assert 1 <= len(refused) <= 3 and len(llm.requests) == len(GOLD) + len(refused)
            out.unlink()
            assert cli(*label_args(texts, out, llm)).returncode == 0
            assert len(llm.requests) == len(GOLD) + len(refused)  # the plain replies are in the cache


def test_429_with_retry_after_500_and_a_dropped_connection_are_retried(cli, llm, texts, tmp_path):
    out = tmp_path / "teacher.jsonl"
    llm.fail(Fault("429", 1.5), "500", "drop")
    start = time.monotonic()
    result = cli(*label_args(texts, out, llm, "--concurrency", "1"))
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert answers(out)[0] == expected(texts)
    assert len(llm.requests) == len(GOLD) + 3
    assert took >= 1.5  # Retry-After honoured; the client's own first backoff is at most 0.5 s
    assert "3 retries" in result.stderr


def test_a_slow_reply_past_the_timeout_is_asked_again_and_then_stops_the_run(cli, llm, texts, tmp_path):
    out = tmp_path / "teacher.jsonl"
    llm.fail(Fault("slow", 5))
    result = cli(*label_args(texts, out, llm, "--concurrency", "1", "--timeout", "0.5"))
    assert result.returncode == 0, result.stderr
    assert answers(out)[0] == expected(texts) and "1 retries" in result.stderr

    other = tmp_path / "other.jsonl"
    llm.fail(*[Fault("slow", 5)] * 2)
    result = cli(*label_args(texts, other, llm, "--concurrency", "1", "--timeout", "0.3", "--retries", "1"))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"tagtune: error: {llm.url}: no answer within the timeout (after 1 retries)")
    assert "Traceback" not in result.stderr


def test_malformed_and_hallucinated_answers_are_counted_and_a_rerun_asks_for_what_is_missing(cli, llm, texts,
                                                                                                tmp_path):
    out = tmp_path / "teacher.jsonl"
    llm.fail("malformed", "extra", "prose")
    result = cli(*label_args(texts, out, llm, "--concurrency", "1"))
    assert result.returncode == 0, result.stderr
    found, _ = answers(out)
    assert len(found) == len(GOLD) - 2  # the malformed and the prose replies are left out
    assert "warning: 2 replies without the entities JSON" in result.stderr
    assert "1 not in their text (first: 'Atlantis'" in result.stderr
    assert "1 with a label not asked for" in result.stderr
    assert all(found[key] == spans for key, spans in expected(texts).items() if key in found)

    result = cli(*label_args(texts, out, llm))
    assert result.returncode == 0, result.stderr
    assert len(llm.requests) == len(GOLD) + 2  # only those two asked again
    assert answers(out)[0] == expected(texts)


def test_concurrency_is_bounded_and_max_requests_stops_early(cli, texts, tmp_path):
    import threading

    lock, now, most = threading.Lock(), [0], [0]

    def counting(text):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        return teacher(text)

    out = tmp_path / "teacher.jsonl"
    with LlmServer(counting) as llm:
        result = cli(*label_args(texts, out, llm, "--concurrency", "2", "--max-requests", "4"))
        assert result.returncode == 0, result.stderr
        assert len(llm.requests) == 4 and len(answers(out)[0]) == 4
        assert "--max-requests reached: 2 texts not asked yet" in result.stderr
        assert most[0] == 2
        result = cli(*label_args(texts, out, llm, "--concurrency", "3"))
        assert len(llm.requests) == len(GOLD) and answers(out)[0] == expected(texts)


def test_label_studio_and_doccano_pre_annotations(cli, llm, texts, tmp_path):
    tasks_path = tmp_path / "tasks.json"
    assert cli(*label_args(texts, tasks_path, llm, "--format", "label-studio")).returncode == 0
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    assert [t["data"]["text"] for t in tasks] == list(GOLD)  # input order
    for task in tasks:
        text = task["data"]["text"]
        [prediction] = task["predictions"]
        assert prediction["model_version"] == "llm:teacher" and task["meta"]["source"] == "llm:teacher"
        found = [(text[r["value"]["start"]:r["value"]["end"]], r["value"]["labels"][0]) for r in prediction["result"]]
        assert found == GOLD[text]
        assert all(r["value"]["text"] == text[r["value"]["start"]:r["value"]["end"]] for r in prediction["result"])
    doccano = tmp_path / "doccano.jsonl"
    cache = tmp_path / "tasks.json.llm-cache"
    assert cli(*label_args(texts, doccano, llm, "--format", "doccano", "--cache", cache)).returncode == 0
    assert {e.text: spans_of(e.text, e.spans) for e in read_examples(doccano, "doccano")} == GOLD
    assert len(llm.requests) == len(GOLD)  # the first run's cache answered every text
    assert not (tmp_path / "doccano.jsonl.llm-cache").exists()


def test_the_guide_and_worked_examples_go_into_every_request_and_dry_run_sends_nothing(cli, llm, texts, tmp_path):
    guide = tmp_path / "guide.txt"
    guide.write_text("PER: a person's name\nORG: a company\n", encoding="utf-8")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"text": "Acme hired Ann.", "spans": [{"start": 0, "end": 4, "label": "ORG"},
                                                                    {"start": 11, "end": 14, "label": "PER"}]}) + "\n")
    out = tmp_path / "teacher.jsonl"
    dry = cli("label", texts, "-o", out, "--guide", guide, "--examples", gold, "--llm-model", "teacher", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    body = json.loads(dry.stdout)
    assert body["model"] == "teacher" and body["messages"][-1]["content"] == next(iter(GOLD))
    assert "ORG: a company" in body["messages"][0]["content"] and "LOC" not in body["messages"][0]["content"]
    assert body["messages"][1:3] == [{"role": "user", "content": "Acme hired Ann."},
                                     {"role": "assistant", "content": '{"entities": [{"text": "Acme", "label": "ORG"}, '
                                                                      '{"text": "Ann", "label": "PER"}]}'}]
    assert not out.exists() and not llm.requests
    result = cli("label", texts, "-o", out, "--guide", guide, "--examples", gold, "--llm", llm.url,
                 "--llm-model", "teacher")
    assert result.returncode == 0, result.stderr
    assert all(r["messages"][:3] == body["messages"][:3] for r in llm.requests)
    assert {s for spans in answers(out)[0].values() for _, s in spans} == {"PER", "ORG"}  # LOC not asked


def test_a_killed_run_resumes_with_no_duplicate_and_no_lost_line(cli, tmp_path):
    many = [f"Ann number {i} met Bob in Paris." for i in range(60)]
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{t}\n" for t in many), encoding="utf-8")
    out = tmp_path / "teacher.jsonl"

    def answer(text):
        return [{"text": "Ann", "label": "PER"}, {"text": "Paris", "label": "LOC"}]

    with LlmServer(answer, latency=0.15) as llm:
        args = [sys.executable, "-m", "tagtune", *map(str, label_args(texts, out, llm, "--concurrency", "4"))]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 10):
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        first = out.read_bytes().count(b"\n")
        cache = out.with_name(out.name + ".llm-cache")
        cached = cache.read_bytes().count(b"\n")  # whole lines: answers the rerun need not ask for
        assert 10 <= first <= cached < len(many)
        sent = len(llm.requests)
        result = cli(*label_args(texts, out, llm, "--concurrency", "4"))
        assert result.returncode == 0, result.stderr
        ids = [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()]
        assert sorted(ids) == list(range(1, len(many) + 1))  # every text, each once
        assert len(llm.requests) - sent == len(many) - cached
        assert len(cache.read_text().splitlines()) == len(many)
        assert cli(*label_args(texts, out, llm)).returncode == 0
        assert len(llm.requests) == sent + len(many) - cached  # a rerun sends nothing


def test_a_cut_last_line_is_removed_before_going_on(cli, llm, texts, tmp_path):
    out = tmp_path / "teacher.jsonl"
    assert cli(*label_args(texts, out, llm)).returncode == 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:20], encoding="utf-8")  # a write cut short
    result = cli(*label_args(texts, out, llm))
    assert result.returncode == 0, result.stderr
    assert "removed its last line, cut short" in result.stderr
    assert answers(out)[0] == expected(texts) and len(llm.requests) == len(GOLD)


def test_out_and_the_cache_are_locked_and_a_link_is_refused(tmp_path):
    from tagtune.apps.label import Journal

    path = tmp_path / "teacher.jsonl"
    journal = Journal(path)
    try:
        with pytest.raises(TagtuneError, match="another tagtune label is writing to this file"):
            Journal(path)
        journal.append({"key": "k", "content": "Ann"})
    finally:
        journal.close()
    assert path.read_text(encoding="utf-8") == '{"key": "k", "content": "Ann"}\n'
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    with pytest.raises(TagtuneError, match="link.jsonl: not a regular file; name a file that is one"):
        Journal(link)
    Journal(tmp_path / "unused.jsonl").close()  # made, and nothing written: removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "teacher.jsonl"]


# --------------------------------------------------------------------------- mistakes, one line each


def one_line_error(result, *parts):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("tagtune: error: ")
    for part in parts:
        assert part in line, line


def test_mistakes_are_one_line(cli, llm, texts, tmp_path):
    out = tmp_path / "teacher.jsonl"
    one_line_error(cli("label", texts, "-o", out, "--llm", llm.url, "--llm-model", "teacher"),
                   "label needs --labels")
    one_line_error(cli(*label_args(tmp_path / "nope.txt", out, llm)), "nope.txt: no such file")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    one_line_error(cli(*label_args(bad, out, llm)), "bad.txt:2: not UTF-8")
    one_line_error(cli("label", texts, "-o", out, "--labels", "PER", "--llm-model", "teacher"), "label needs --llm URL")
    wrong = cli("label", texts, "-o", out, "--labels", "PER", "--llm", llm.url, "--llm-model", "gpt-none")
    one_line_error(wrong, llm.url, "404", "The model `gpt-none` does not exist")
    assert not out.exists()  # nothing written, nothing left behind
    with LlmServer() as gone:
        url = gone.url
    one_line_error(cli("label", texts, "-o", out, "--labels", "PER", "--llm", url, "--llm-model", "teacher",
                       "--retries", "1"), url, "cannot connect (after 1 retries)", "is the server running")
    llm.fail("ok", "ok", "too-long")
    too_long = cli(*label_args(texts, out, llm, "--concurrency", "1"))
    one_line_error(too_long, f"{llm.url}: the server answered 400: This model's maximum context length is 8192",
                   f"(asking for the text {list(GOLD)[2]!r}); the answers so far are kept in {out}")
    assert len(answers(out)[0]) == 2
    out.unlink()
    one_line_error(cli(*label_args(texts, texts, llm)), "is TEXTS")
    one_line_error(cli(*label_args(texts, out, llm, "--concurrency", "0")), "--concurrency must be")
    guide = tmp_path / "guide.txt"
    guide.write_text("PER: people\nMISC: other things\n", encoding="utf-8")
    one_line_error(cli(*label_args(texts, out, llm, "--guide", guide)), "describes 'MISC'", "not in --labels")


def test_no_api_key_is_needed_for_a_local_server_named_by_openai_base_url(cli, llm, texts, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
    out = tmp_path / "teacher.jsonl"
    result = cli("label", texts, "-o", out, "--labels", "PER,ORG,LOC", "--llm-model", "teacher")
    assert result.returncode == 0, result.stderr
    assert answers(out)[0] == expected(texts)


def test_without_the_openai_client_one_line_says_what_to_install(cli, llm, texts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    result = cli(*label_args(texts, tmp_path / "out.jsonl", llm))
    one_line_error(result, "pip install 'tagtune[llm]'")
    assert cli(*label_args(texts, tmp_path / "out.jsonl", llm, "--dry-run")).returncode == 0
