"""tagtune select: ranking by uncertainty, near-duplicates, the three output formats read back, bad input."""

import copy
import itertools
import json
import random
import warnings
import zlib

import numpy as np
import pytest

from tagtune.data.formats import read_examples
from tagtune import TagtuneError
from tagtune.data.schemes import transition_mask
from tagtune.apps.select import (Choice, NearDuplicates, SelectWarning, choose, jaccard, normalised, read_pool, render,
                            score, shingles)
from tagtune import Span

POOL = [
    "We moved the service from Python to Rust.",
    "Erlang and Elixir are nice",
    "🎉🎉 Python rocks",
    "the sofa is red",
    "Go is fun",
    "I wrote Kotlin and Scala",
    "python and rust and java",
    "my cat sleeps on the sofa",
    "Haskell is older than Java",
]


@pytest.fixture(scope="module")
def keyword_tagger(tiny_bert, tmp_path_factory):
    """The tiny BERT trained on programming-language keywords: it finds some (``KEY``) and
    hesitates over others, so texts differ in uncertainty."""
    import tagtune

    folder = tmp_path_factory.mktemp("select")
    languages = ["Python", "Rust", "Java", "Haskell", "Go", "Ruby"]
    frames = ["We moved the service from {a} to {b}.", "{a} is faster than {b} here", "I like {a} and {b} a lot",
              "Nobody writes {a} anymore, says the {b} team", "my cat sleeps on the sofa", "the weather is nice"]
    rng = random.Random(0)
    with open(folder / "kw.jsonl", "w", encoding="utf-8") as f:
        for i in range(60):
            a, b = rng.sample(languages, 2)
            text = frames[i % len(frames)].format(a=a, b=b)
            f.write(json.dumps({"text": text, "keywords": [k for k in (a, b) if k in text]}) + "\n")
    out = folder / "kw-tagger"
    tagtune.train(model=str(tiny_bert), train=str(folder / "kw.jsonl"), out=str(out), epochs=15, lr=3e-3, seed=0,
                  progress=False, device="cpu")
    return out


@pytest.fixture(scope="module")
def tagger(keyword_tagger):
    from tagtune import Tagger

    return Tagger.load(keyword_tagger, device="cpu")


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool.txt"
    path.write_text("\n".join(POOL) + "\n", encoding="utf-8")
    return path


def brute_force_uncertainty(logits: np.ndarray, labels, scheme, transitions=None) -> float:
    """Mean over units of 1 - p(the best path's tag), every allowed path enumerated; a CRF's
    ``transitions`` (start, trans, end log-scores) add to the paths' scores."""
    start, trans, end = transition_mask(labels, scheme)
    n, n_labels = logits.shape
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    marginals = np.zeros((n, n_labels))
    total, best, best_score = 0.0, None, -np.inf
    for path in itertools.product(range(n_labels), repeat=n):
        if not (start[path[0]] and end[path[-1]] and all(trans[a, b] for a, b in zip(path, path[1:]))):
            continue
        s = sum(log_p[t, y] for t, y in enumerate(path))
        if transitions is not None:
            s += transitions[0][path[0]] + transitions[2][path[-1]]
            s += sum(transitions[1][a, b] for a, b in zip(path, path[1:]))
        weight = np.exp(s)
        total += weight
        marginals[np.arange(n), path] += weight
        if s > best_score:
            best, best_score = path, s
    marginals /= total
    return float(np.mean([1 - marginals[t, y] for t, y in enumerate(best)]))


# --------------------------------------------------------------------------- ranking


def test_uncertainty_is_the_expected_share_of_wrong_units(tagger):
    """Tagger.uncertainty (batched forward-backward) equals the mean of 1 - p(decoded tag) with every
    tag path enumerated, text by text."""
    texts = [t for t in POOL if len(t.split()) <= 6]
    logits, _ = tagger.unit_logits(texts)
    expected = [brute_force_uncertainty(x, tagger.labels, tagger.settings.scheme) for x in logits]
    assert len(set(np.round(expected, 4))) > 3  # the texts do differ
    np.testing.assert_allclose(tagger.uncertainty(logits, chunk=3), expected, atol=1e-9)
    assert tagger.uncertainty([np.zeros((0, len(tagger.labels)), dtype=np.float32)]) == [0.0]


def test_uncertainty_of_a_crf_tagger_adds_its_transitions(tagger):
    from tagtune.data.decode import Transitions

    rng = np.random.default_rng(0)
    n = len(tagger.labels)
    transitions = Transitions(rng.normal(size=n), rng.normal(size=(n, n)), rng.normal(size=n))
    crf = copy.copy(tagger)
    crf.transitions = transitions
    texts = [t for t in POOL if len(t.split()) <= 5]
    logits, _ = tagger.unit_logits(texts)
    expected = [brute_force_uncertainty(x, tagger.labels, tagger.settings.scheme, transitions) for x in logits]
    np.testing.assert_allclose(crf.uncertainty(logits), expected, atol=1e-9)
    assert not np.allclose(tagger.uncertainty(logits), expected, atol=1e-4)


def test_choose_puts_the_most_uncertain_first(tagger):
    logits, _ = tagger.unit_logits(POOL)
    expected = [brute_force_uncertainty(x, tagger.labels, tagger.settings.scheme) for x in logits]
    order = sorted(range(len(POOL)), key=lambda i: -expected[i])
    chosen = choose(tagger, POOL, len(POOL))
    assert [c.index for c in chosen] == order
    assert [c.text for c in chosen] == [POOL[i] for i in order]
    np.testing.assert_allclose([c.uncertainty for c in chosen], sorted(expected, reverse=True), atol=1e-9)
    assert [c.spans for c in chosen] == [tagger.predict([POOL[i]])[0] for i in order]
    assert [c.index for c in choose(tagger, POOL, 3)] == order[:3]


def test_progress_bar_on_long_pools(tagger, capsys):
    score(tagger, POOL, progress=True, batch_texts=4)
    err = capsys.readouterr().err
    assert "ranking [" in err and f"{len(POOL)}/{len(POOL)} texts" in err
    score(tagger, POOL, progress=True)  # a single batch: no bar
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- near-duplicates


def test_normalised_form_and_shingles():
    assert normalised("  RT:  Python ＩＳ fun!!  ") == "rt python is fun"
    assert shingles("abc") == {zlib.crc32(b"abc")}  # shorter than a shingle: one piece
    assert shingles("abcdefg") == {zlib.crc32(piece.encode()) for piece in ("abcde", "bcdef", "cdefg")}
    assert shingles("abcdefg") != shingles("gfedcba") and shingles("あいうえおか") == {
        zlib.crc32("あいうえお".encode()), zlib.crc32("いうえおか".encode())}
    assert jaccard(shingles("abcdefg"), shingles("abcdefh")) == pytest.approx(2 / 4)


def test_near_duplicates_are_left_out():
    seen = NearDuplicates(0.8)
    base = "Barack Obama visited Lisbon on Monday to meet the prime minister of Portugal"
    assert seen.add(base)
    assert not seen.add(base.upper() + "!!!")  # the same normalised form
    assert not seen.add(base.replace("Monday", "Tuesday"))  # one word changed
    assert seen.add("Angela Merkel visited Lisbon")  # shares words, far below 0.8
    assert seen.add("something else entirely")
    assert NearDuplicates(1.0).add(base) and len(seen.kept) == 3


def test_near_duplicates_agree_with_exact_jaccard():
    """The bands miss no pair at or above the threshold: the decisions equal those of comparing each
    text with every kept one."""
    rng = random.Random(1)
    words = [f"w{i}" for i in range(40)]
    bases = [" ".join(rng.choices(words, k=12)) for _ in range(30)]
    texts = []
    for _ in range(400):
        tokens = rng.choice(bases).split()
        for _ in range(rng.randint(0, 4)):
            tokens[rng.randrange(len(tokens))] = rng.choice(words)
        texts.append(" ".join(tokens))
    seen, kept = NearDuplicates(0.75), []
    for text in texts:
        pieces = shingles(normalised(text))
        expected = all(jaccard(pieces, k) < 0.75 for k in kept)
        assert seen.add(text) == expected
        if expected:
            kept.append(pieces)
    assert 30 < len(kept) < 400


def test_choose_leaves_near_duplicates_out(tagger):
    texts = ["Python is faster than Rust here", "python is faster than rust here!", "the sofa is red",
             "Python is faster than Rust here, really"]
    with pytest.warns(SelectWarning, match=r"-n 4 but the pool has 4 texts \(2 left out as near-duplicates\): "
                                           r"taking all 2"):
        chosen = choose(tagger, texts, 4, max_similarity=0.7)
    assert len(chosen) == 2 and "the sofa is red" in [c.text for c in chosen]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(choose(tagger, texts, 3, max_similarity=1.0)) == 3


NO_KEYWORDS = ["the sofa is red", "my cat sleeps on the sofa", "the weather is nice", "the cat is nice"]


def test_a_choice_without_any_span_is_said(tagger):
    with pytest.warns(SelectWarning) as caught:
        chosen = choose(tagger, NO_KEYWORDS, 3)
    assert [c.spans for c in chosen] == [[], [], []]
    assert [str(w.message) for w in caught] == [
        "the tagger found no span in any of the 3 chosen texts: their pre-annotations are all empty"]
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one chosen text with a span is enough
        assert any(c.spans for c in choose(tagger, [*NO_KEYWORDS, "I like Python and Rust a lot"], 5))


def select_pool(cli, tagger, texts, out, *args):
    """``tagtune select`` of ``tagger`` on a pool file of ``texts`` beside ``out``, every warning shown."""
    pool = out.parent / "pool.txt"
    pool.write_text("\n".join(texts) + "\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        return cli("select", tagger, pool, "-o", out, "--device", "cpu", *args)


def test_select_says_when_its_pre_annotations_are_all_empty(cli, keyword_tagger, tmp_path):
    out = tmp_path / "tasks.json"
    result = select_pool(cli, keyword_tagger, NO_KEYWORDS, out, "-n", 2, "--format", "label-studio", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("tagtune: warning: the tagger found no span in any of the 2 chosen texts: their "
                             "pre-annotations are all empty\n")
    assert [t["predictions"][0]["result"] for t in json.loads(out.read_text(encoding="utf-8"))] == [[], []]


# --------------------------------------------------------------------------- formats


def test_label_studio_task_shape():
    choice = Choice(0, "🎉 Ann met Bo", [Span(2, 5, "PER", 0.91234), Span(10, 12, "PER", 0.5)], 0.25)
    assert json.loads(render([choice], "label-studio", "my-tagger")) == [{
        "data": {"text": "🎉 Ann met Bo"},
        "predictions": [{"model_version": "my-tagger", "score": 0.75, "result": [
            {"from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": 2, "end": 5, "text": "Ann", "labels": ["PER"]}, "score": 0.9123},
            {"from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": 10, "end": 12, "text": "Bo", "labels": ["PER"]}, "score": 0.5},
        ]}],
    }]
    assert render([choice], "doccano") == '{"text": "🎉 Ann met Bo", "label": [[2, 5, "PER"], [10, 12, "PER"]]}\n'
    assert json.loads(render([choice], "jsonl")) == {
        "text": "🎉 Ann met Bo", "uncertainty": 0.25,
        "spans": [{"start": 2, "end": 5, "label": "PER", "text": "Ann", "score": 0.9123},
                  {"start": 10, "end": 12, "label": "PER", "text": "Bo", "score": 0.5}]}


def accepted(path, tmp_path):
    """The Label Studio file ``path`` as Label Studio exports it once each prediction is accepted as
    it is: its result becomes the task's annotation."""
    tasks = json.loads(path.read_text(encoding="utf-8"))
    for task in tasks:
        task["annotations"] = [{"id": 1, "was_cancelled": False, "result": task["predictions"][0]["result"]}]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    return exported


@pytest.mark.parametrize("format", ["jsonl", "doccano", "label-studio"])
def test_each_format_reads_back_with_the_same_spans(format, cli, tagger, keyword_tagger, pool, tmp_path):
    out = tmp_path / ("tasks.json" if format == "label-studio" else "tasks.jsonl")
    result = cli("select", keyword_tagger, pool, "-n", 5, "-o", out, "--format", format, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"tagtune: wrote 5 texts to {out} ({format})")
    expected = {c.text: [(s.start, s.end, s.label) for s in c.spans] for c in choose(tagger, POOL, 5)}
    assert sum(map(len, expected.values())) >= 2 and "🎉🎉 Python rocks" in expected  # spans, emoji
    if format == "label-studio":
        with pytest.raises(TagtuneError, match="5 of them with predictions, which are not read"):
            read_examples(out)
        out = accepted(out, tmp_path)
    examples = read_examples(out)
    assert {e.text: [(s.start, s.end, s.label) for s in e.spans] for e in examples} == expected
    assert [e.text for e in examples] == list(expected)  # most uncertain first


# --------------------------------------------------------------------------- the command and bad input


def test_n_bigger_than_the_pool_takes_all(cli, keyword_tagger, pool, tmp_path):
    out = tmp_path / "all.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = cli("select", keyword_tagger, pool, "-n", 50, "-o", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warned == [f"tagtune: warning: -n 50 but the pool has {len(POOL)} texts: taking all {len(POOL)}"]
    assert sorted(e.text for e in read_examples(out)) == sorted(POOL)


def test_n_below_one_is_refused(cli, keyword_tagger, pool, tmp_path):
    for n in (0, -3):
        result = cli("select", keyword_tagger, pool, "-n", n, "-o", tmp_path / "out.jsonl")
        assert result.returncode == 1
        assert result.stderr == f"tagtune: error: -n must be a whole number of texts, at least 1, got {n}\n"
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n{"text": "b"}\n[1, 2]\n', 'pool.jsonl:3: expected a JSON object with a "text" string'),
    ('{"text": "a"}\n{"txt": "b"}\n', 'pool.jsonl:2: expected a JSON object with a "text" string'),
    ('{"text": "a"}\n{"text": \n', "pool.jsonl:2: not valid JSON"),
    ("\n  \n\n", "pool.jsonl: the pool has no texts (no non-empty line)"),
])
def test_bad_pools_are_one_line_errors_and_write_nothing(cli, keyword_tagger, tmp_path, content, message):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("select", keyword_tagger, pool, "-n", 2, "-o", out)
    assert result.returncode == 1
    assert result.stderr.startswith(f"tagtune: error: {tmp_path / message}") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


def test_pool_reading(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_bytes(b"first\n\nsecond \xff\n")
    with pytest.raises(TagtuneError, match=r"pool.txt:3: not UTF-8 text \(byte 0xff\)"):
        read_pool(pool)
    pool.write_text('{"text": "a", "id": 1}\n\n{"text": " "}\n{"text": "b"}\n', encoding="utf-8")
    assert read_pool(pool) == ["a", "b"]
    with pytest.raises(TagtuneError, match="no such file"):
        read_pool(tmp_path / "missing.txt")


def test_an_existing_output_is_refused_without_overwrite(cli, keyword_tagger, pool, tmp_path):
    out = tmp_path / "tasks.json"
    out.write_text("keep me", encoding="utf-8")
    result = cli("select", keyword_tagger, pool, "-n", 2, "-o", out, "--format", "label-studio")
    assert result.returncode == 1
    assert result.stderr == f"tagtune: error: {out}: already exists (pass --overwrite to replace it)\n"
    assert out.read_text(encoding="utf-8") == "keep me"
    result = cli("select", keyword_tagger, pool, "-n", 2, "-o", out, "--format", "label-studio", "--overwrite",
                 "--quiet", "--device", "cpu")
    assert result.returncode == 0 and result.stderr == ""
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.txt", "tasks.json"]  # no temporary file left
    result = cli("select", keyword_tagger, pool, "-n", 2, "-o", pool, "--overwrite")
    assert result.returncode == 1 and "is the pool" in result.stderr
    assert pool.read_text(encoding="utf-8").splitlines() == POOL


def test_select_in_a_new_process(keyword_tagger, pool, tmp_path):
    """The command as installed: a label-studio file, the pool size on stderr, no traceback."""
    from helpers import tagtune

    from tagtune import Tagger

    out = tmp_path / "sub" / "tasks.json"
    result = tagtune("select", keyword_tagger, pool, "-n", 3, "-o", out, "--format", "label-studio", "--device", "cpu",
                     "--bf16", "off")
    assert result.returncode == 0, result.stderr
    chosen = choose(Tagger.load(keyword_tagger, device="cpu", bf16="off"), POOL, 3)  # the same, in this process
    assert result.stderr.splitlines() == [
        f"tagtune: {pool}: {len(POOL)} texts",
        f"tagtune: wrote 3 texts to {out} (label-studio), uncertainty "
        f"{chosen[0].uncertainty:.3f} down to {chosen[-1].uncertainty:.3f}"]
    assert chosen[0].uncertainty > chosen[-1].uncertainty
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["predictions"][0]["model_version"] for t in tasks] == ["kw-tagger"] * 3
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert scores == sorted(scores)  # least confident first


# --------------------------------------------------------------------------- a span tagger


SPAN_POOL = [
    "University of Tokyo is big",
    "the sofa is red",
    "Mary Jones met John Smith in Lisbon",
    "UNIVERSITY of Tokyo is big!",  # a near-duplicate of the first
    "Bank of Tokyo hired Anna Lee",
    "the weather is nice today",
    "We saw Peter Jones at the University of Lisbon",
]


@pytest.fixture(scope="module")
def span_tagger(tiny_bert, tmp_path_factory):
    """The tiny BERT with a span head, 20 steps on nested texts: sure of some texts, unsure of others."""
    from test_span_nested import NESTED
    from test_span_train import span_config, write_jsonl

    from tagtune import train

    folder = tmp_path_factory.mktemp("select-span")
    data = write_jsonl(folder / "nested.jsonl", NESTED)
    train(span_config(tiny_bert, data, folder / "span-tagger", epochs=20, batch_size=8, lr=1e-2, bf16="off"))
    return folder / "span-tagger"


def test_select_ranks_a_span_taggers_texts_by_its_uncertainty(cli, span_tagger, tmp_path):
    from tagtune import Tagger

    out = tmp_path / "chosen.jsonl"
    result = select_pool(cli, span_tagger, SPAN_POOL, out, "-n", len(SPAN_POOL), "--bf16", "off")
    assert result.returncode == 0, result.stderr
    assert f"-n {len(SPAN_POOL)} but the pool has {len(SPAN_POOL)} texts (1 left out as near-duplicates)" in result.stderr

    tagger = Tagger.load(span_tagger, device="cpu", bf16="off")
    unsure = tagger.uncertainty(SPAN_POOL)
    assert len(set(np.round(unsure, 4))) == len(SPAN_POOL) and max(unsure) > 2 * min(unsure)  # the texts do differ
    order = sorted(range(len(SPAN_POOL)), key=lambda i: -unsure[i])
    duplicate = max(order.index(0), order.index(3))  # of the two, the one ranked later is left out
    expected = [i for k, i in enumerate(order) if k != duplicate]
    chosen = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [c["text"] for c in chosen] == [SPAN_POOL[i] for i in expected]
    assert [c["uncertainty"] for c in chosen] == [round(unsure[i], 4) for i in expected]

    # the tagger's spans, nested ones included, as pre-annotations that train --head span reads back
    spans = tagger.predict([SPAN_POOL[i] for i in expected])
    assert [c["spans"] for c in chosen] == [[s.to_dict(SPAN_POOL[i]) for s in found]
                                             for i, found in zip(expected, spans)]
    assert any(a.end > b.start for found in spans for a, b in zip(found, found[1:]))  # some spans nest
    examples = read_examples(out, overlaps=True)
    assert [[(s.start, s.end, s.label) for s in e.spans] for e in examples] == [
        [(s.start, s.end, s.label) for s in found] for found in spans]
