"""Span candidates (every stretch of up to K units), their labels, packed batches of them;
nested spans kept through alignment and reading."""

import itertools
import json

import numpy as np
import pytest

from tagtune import Span, TagtuneError
from tagtune.data.align import unit_entities, unit_spans, units_of, windows_of, with_specials
from tagtune.data.batching import pack
from tagtune.data.candidates import (
    batch_candidates,
    candidate_index,
    candidate_labels,
    n_candidates,
    span_windows,
    unit_last_tokens,
    window_candidates,
)
from tagtune.data.formats import read_examples
from tagtune.text.tokenizer import Encoding, load_tokenizer

SIZES = [(0, 1), (0, 8), (1, 1), (1, 8), (3, 8), (5, 2), (8, 8), (9, 8), (20, 3), (13, 1), (30, 8)]


def brute_candidates(n, k):
    """(i, j) pairs, ends inclusive, ordered by i then j."""
    return [(i, j) for i, j in itertools.product(range(n), repeat=2) if i <= j and j - i < k]


# --------------------------------------------------------------------------- enumeration


@pytest.mark.parametrize("n, k", SIZES)
def test_window_candidates_match_brute_force(n, k):
    starts, ends = window_candidates(n, k)
    assert starts.dtype == ends.dtype == np.int64
    expected = brute_candidates(n, k)
    assert list(zip(starts.tolist(), ends.tolist())) == expected
    assert n_candidates(n, k) == len(expected) == sum(min(k, n - i) for i in range(n))
    if expected:
        i, j = np.array(expected).T
        assert candidate_index(n, k, i, j).tolist() == list(range(len(expected)))


def test_n_candidates_of_many_windows():
    assert n_candidates(np.array([0, 1, 4, 10]), 3).tolist() == [0, 1, 9, 27]
    assert window_candidates(4, 2)[0].tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert window_candidates(4, 2)[1].tolist() == [0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(TagtuneError, match="at least 1 word"):
        window_candidates(3, 0)


# --------------------------------------------------------------------------- labels


def brute_labels(n, k, entities):
    by_extent = {(i, j - 1): label for i, j, label in entities}
    return [by_extent.get(c, 0) for c in brute_candidates(n, k)]


@pytest.mark.parametrize("n, k", [(0, 4), (1, 4), (3, 4), (6, 4), (12, 3), (12, 8)])
def test_candidate_labels_match_brute_force(n, k):
    rng = np.random.default_rng(n * 10 + k)
    # nested and overlapping entities, some wider than k, each extent with one label
    extents = {(int(i), int(i + w)) for i, w in zip(rng.integers(0, max(n, 1), 12), rng.integers(1, 6, 12))
               if i + w <= n}
    entities = [(i, j, int(rng.integers(1, 4))) for i, j in sorted(extents)]
    result = candidate_labels(n, k, entities + entities[:2])  # exact duplicates merge
    assert result.labels.dtype == np.int64
    assert result.labels.tolist() == brute_labels(n, k, entities)
    assert result.too_wide == sum(j - i > k for i, j, _ in entities) + sum(j - i > k for i, j, _ in entities[:2])


def test_nested_entities_each_label_their_own_candidate():
    # "University of Tokyo Hospital": ORG over all, ORG over the first three, LOC on "Tokyo"
    labels, too_wide = candidate_labels(4, 3, [(0, 4, 1), (0, 3, 1), (2, 3, 2)])
    starts, ends = window_candidates(4, 3)
    labelled = {(i, j): y for i, j, y in zip(starts.tolist(), ends.tolist(), labels.tolist()) if y}
    assert labelled == {(0, 2): 1, (2, 2): 2} and too_wide == 1


def test_one_extent_with_two_labels_is_an_error():
    with pytest.raises(TagtuneError) as info:
        candidate_labels(5, 3, [(1, 3, 2), (0, 1, 1), (1, 3, 1)], source="train.jsonl:4")
    assert str(info.value) == ("train.jsonl:4: units [1, 3) carry two labels, ids 1 and 2; "
                               "a candidate span has one label")
    with pytest.raises(ValueError, match="is not"):
        candidate_labels(5, 3, [(2, 6, 1)])


# --------------------------------------------------------------------------- packed batches


def test_batch_candidates_match_per_window_brute_force():
    rng = np.random.default_rng(0)
    k = 3
    units = [5, 1, 9]
    firsts, lasts = [], []
    for n in units:
        sizes = rng.integers(1, 4, n)  # tokens per unit
        first = np.cumsum(sizes) - sizes
        firsts.append(first.tolist())
        lasts.append((first + sizes - 1).tolist())
    lengths = [(last[-1] + 1 if last else 0) + 2 for last in lasts]  # [CLS] tokens [SEP]
    offsets = np.cumsum([0] + lengths)[:-1].tolist()
    entities = [[(0, 5, 1), (0, 2, 2), (1, 2, 3), (1, 2, 3)], [(0, 1, 1)], [(2, 5, 1), (3, 4, 2), (6, 9, 3)]]
    batch = batch_candidates(firsts, lasts, offsets, k, entities)

    rows = []
    for b, n in enumerate(units):
        labels = brute_labels(n, k, entities[b])
        for (i, j), label in zip(brute_candidates(n, k), labels):
            rows.append((offsets[b] + 1 + firsts[b][i], offsets[b] + 1 + lasts[b][j], j - i, b, i, j, label))
    got = zip(batch.start_token.tolist(), batch.end_token.tolist(), batch.width.tolist(), batch.window.tolist(),
              batch.start_unit.tolist(), batch.end_unit.tolist(), batch.labels.tolist())
    assert list(got) == rows
    assert len(batch) == sum(n_candidates(n, k) for n in units) == len(rows)
    assert batch.too_wide == 1  # (0, 5) in the first window

    unlabelled = batch_candidates(firsts, lasts, offsets, k)
    assert unlabelled.labels is None and unlabelled.start_token.tolist() == batch.start_token.tolist()
    empty = batch_candidates([[], [0]], [[], [0]], [0, 2], k)
    assert empty.start_token.tolist() == [3] and empty.window.tolist() == [1]


def test_batch_candidates_point_at_the_units_tokens(minilm):
    """Packed as training packs windows: a candidate's start and end tokens are its units' first
    and last subwords, and their characters span the candidate's text."""
    tokenizer = load_tokenizer(minilm)
    texts = ["Zuckerberg visited Strasbourg", "ok", "University of Tokyo Hospital staff"]
    encodings = [tokenizer.encode(text) for text in texts]
    units = [units_of(enc) for enc in encodings]
    batch = pack([with_specials(enc.ids, 101, 102) for enc in encodings])
    cu = batch.cu_seqlens.tolist()
    candidates = batch_candidates([u.first for u in units], [unit_last_tokens(u) for u in units], cu[:-1], 4)
    stream_offsets = [(0, 0)] + [o for enc in encodings for o in [*enc.offsets, (0, 0), (0, 0)]][:-1]
    ids = batch.input_ids.tolist()
    spans = set()
    for start, end, b, i, j in zip(candidates.start_token.tolist(), candidates.end_token.tolist(),
                                   candidates.window.tolist(), candidates.start_unit.tolist(),
                                   candidates.end_unit.tolist()):
        assert cu[b] < start <= end < cu[b + 1] - 1  # inside the window, never [CLS] or [SEP]
        assert ids[start] == encodings[b].ids[units[b].first[i]]
        text = texts[b][stream_offsets[start][0]:stream_offsets[end][1]]
        assert text == texts[b][units[b].ranges[i][0]:units[b].ranges[j][1]]
        spans.add(text)
    assert {"Zuckerberg", "Zuckerberg visited Strasbourg", "ok", "Tokyo Hospital staff"} <= spans


# --------------------------------------------------------------------------- last tokens


def encoding(tokens, offsets, words):
    return Encoding(list(range(len(tokens))), offsets, tokens, [False] * len(tokens), words)


def brute_last(enc, units, all_subwords):
    """The last token with characters that starts inside each unit's range."""
    last = []
    for start, end in units.ranges:
        inside = [t for t, (s, e) in enumerate(enc.offsets) if e > s and start <= s < end]
        last.append(inside[-1])
    return last


XLMR = encoding(  # "I saw 東京 today": a ▁ before each word, a lone ▁ opening 東京
    ["▁I", "▁saw", "▁", "東", "京", "▁today"],
    [(0, 1), (2, 5), (6, 6), (6, 7), (7, 8), (9, 14)], [0, 1, 2, 2, 2, 3])
BYTES = encoding(  # "a 鬱 b": three byte pieces of one character
    ["a", "<0xE9>", "<0xAC>", "<0xB1>", "b"], [(0, 1), (2, 3), (2, 3), (2, 3), (4, 5)], [0, 1, 1, 1, 2])
SPACES = encoding(  # "multiple   spaces": a run of spaces as a token of its own, after a word
    ["multiple", "  ", "Ġspaces"], [(0, 8), (9, 9), (11, 17)], [0, 1, 2])


@pytest.mark.parametrize("enc, all_subwords, first, last", [
    (XLMR, False, [0, 1, 2, 5], [0, 1, 4, 5]),
    (XLMR, True, [0, 1, 3, 4, 5], [0, 1, 3, 4, 5]),
    (BYTES, False, [0, 1, 4], [0, 3, 4]),
    (BYTES, True, [0, 1, 4], [0, 3, 4]),
    (SPACES, False, [0, 2], [0, 2]),
])
def test_unit_last_tokens(enc, all_subwords, first, last):
    units = units_of(enc, all_subwords)
    assert units.first == first
    assert unit_last_tokens(units) == last == brute_last(enc, units, all_subwords)


def test_space_token_after_a_word_is_not_its_last():
    units = units_of(SPACES)
    assert units.of_token == [0, 0, 1]  # the run of spaces counts with the word before it
    assert unit_last_tokens(units) == [0, 2]


@pytest.mark.parametrize("all_subwords", [False, True])
def test_unit_last_tokens_of_a_wordpiece_tokenizer(minilm, all_subwords):
    tokenizer = load_tokenizer(minilm)
    enc = tokenizer.encode("Zuckerberg visited Strasbourg, unbelievably.")
    units = units_of(enc, all_subwords)
    last = unit_last_tokens(units)
    assert last == brute_last(enc, units, all_subwords)
    assert all(f <= t for f, t in zip(units.first, last))
    if not all_subwords:
        assert enc.tokens[units.first[0]:last[0] + 1] == ["zu", "##cker", "##berg"]


# --------------------------------------------------------------------------- unit spans


def test_unit_spans_keep_nested_spans(minilm):
    units = units_of(load_tokenizer(minilm).encode("University of Tokyo Hospital"))
    spans = [Span(0, 28, "ORG"), Span(0, 19, "ORG"), Span(14, 19, "LOC")]
    entities, stats = unit_spans(spans, units)
    assert entities == [(0, 3, "ORG"), (0, 4, "ORG"), (2, 3, "LOC")] and stats.message() is None
    assert unit_entities(spans, units)[1].dropped_overlap == 2


def test_unit_spans_widen_and_drop_as_unit_entities(minilm):
    units = units_of(load_tokenizer(minilm).encode("unbelievable things happened"))
    flat = [Span(2, 8, "X"), Span(13, 16, "Y"), Span(12, 13, "Z")]
    entities, stats = unit_spans(flat, units, "f.jsonl:3")
    expected, expected_stats = unit_entities(flat, units, "f.jsonl:3")
    assert entities == expected == [(0, 1, "X"), (1, 2, "Y")]
    assert stats == expected_stats and (stats.widened, stats.dropped_empty) == (2, 1)
    # after widening: the same units and label merge, another label stays
    entities, stats = unit_spans([Span(0, 2, "A"), Span(4, 6, "A"), Span(4, 6, "B")], units, "f.jsonl:4")
    assert entities == [(0, 1, "A"), (0, 1, "B")]
    assert (stats.widened, stats.merged, stats.dropped_overlap) == (3, 1, 0)
    assert "1 merged with another span" in stats.message() and "f.jsonl:4" in stats.message()


# --------------------------------------------------------------------------- reading


NESTED = "University of Tokyo Hospital"  # ORG [0, 28) over ORG [0, 19) over LOC [14, 19)
EXPECTED = [(0, 19, "ORG"), (0, 28, "ORG"), (14, 19, "LOC")]


def pairs(examples):
    return [(e.text, [(s.start, s.end, s.label) for s in e.spans]) for e in examples]


def ls_region(start, end, label):
    return {"value": {"start": start, "end": end, "text": NESTED[start:end], "labels": [label]},
            "id": f"r{start}-{end}", "from_name": "label", "to_name": "text", "type": "labels", "origin": "manual"}


def label_studio_export():
    return [{
        "id": 41, "annotations": [{
            "id": 7, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
            "result": [ls_region(14, 19, "LOC"), ls_region(0, 28, "ORG"), ls_region(0, 19, "ORG"),
                       ls_region(14, 19, "LOC")],
            "created_at": "2024-05-01T09:00:00.000000Z", "lead_time": 12.5, "task": 41,
        }],
        "drafts": [], "predictions": [], "data": {"text": NESTED}, "meta": {},
        "created_at": "2024-05-01T08:59:00.000000Z", "inner_id": 1, "total_annotations": 1,
        "cancelled_annotations": 0, "total_predictions": 0, "project": 3,
    }]


@pytest.mark.parametrize("name, content, format", [
    ("nested.jsonl", json.dumps({"text": NESTED, "spans": [
        {"start": 14, "end": 19, "label": "LOC", "text": "Tokyo"}, [0, 28, "ORG"], [0, 19, "ORG"], [0, 19, "ORG"]]}),
     "jsonl"),
    ("project.json", json.dumps(label_studio_export(), indent=2), "label-studio"),
    ("admin.jsonl", json.dumps({"id": 12, "text": NESTED, "label": [[0, 28, "ORG"], [14, 19, "LOC"], [0, 19, "ORG"]],
                                "Comments": []}), "doccano"),
    ("relations.jsonl", json.dumps({"id": 13, "text": NESTED, "entities": [
        {"id": 1, "label": "ORG", "start_offset": 0, "end_offset": 28},
        {"id": 2, "label": "LOC", "start_offset": 14, "end_offset": 19},
        {"id": 3, "label": "ORG", "start_offset": 0, "end_offset": 19}], "relations": []}), "doccano"),
])
def test_overlapping_spans_read_with_overlaps(tmp_path, name, content, format):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    for given in (format, None):  # named, and told from the file
        assert pairs(read_examples(path, given, overlaps=True)) == [(NESTED, EXPECTED)]
        with pytest.raises(TagtuneError) as info:
            read_examples(path, given)
        message = str(info.value)
        assert message.startswith(f"{path}:") and "spans overlap: ORG [0, 19) 'University of Tokyo' and" in message
        assert message.endswith("; a tagger with --head span learns overlapping and nested spans")


@pytest.mark.parametrize("overlaps", [False, True])
def test_one_extent_with_two_labels_is_refused_either_way(tmp_path, overlaps):
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps({"text": NESTED, "spans": [[14, 19, "LOC"], [14, 19, "ORG"]]}) + "\n")
    with pytest.raises(TagtuneError) as info:
        read_examples(path, overlaps=overlaps)
    assert str(info.value) == (f"{path}:1: spans overlap: LOC [14, 19) 'Tokyo' and ORG [14, 19) 'Tokyo' "
                               "(the same characters with two labels; a span has one label)")


def test_conll_and_keywords_read_the_same_either_way(tmp_path):
    conll = tmp_path / "d.conll"
    conll.write_text("University B-ORG\nof I-ORG\nTokyo I-ORG\nHospital I-ORG\n\nTokyo B-LOC\n")
    keywords = tmp_path / "k.jsonl"
    record = {"text": "東京大学と東京", "keywords": ["東京", "東京大学"]}  # the longer match wins
    keywords.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    for path, expected in [(conll, [(NESTED, [(0, 28, "ORG")]), ("Tokyo", [(0, 5, "LOC")])]),
                           (keywords, [("東京大学と東京", [(0, 4, "KEY"), (5, 7, "KEY")])])]:
        assert pairs(read_examples(path)) == pairs(read_examples(path, overlaps=True)) == expected


@pytest.mark.parametrize("max_length,stride", [(12, 4), (16, 6), (512, 32)])
def test_span_windows_hold_whole_units_and_the_entities_whole_in_them(minilm, max_length, stride):
    """Against a brute force: a window holds exactly the units whose tokens all lie in it, and
    an entity is a label in exactly the windows holding it whole; the count of entities held by
    no window is right."""
    tokenizer = load_tokenizer(minilm)
    text = ("Anna Karenina met the University of Tokyo delegation in Lisbon, then unbelievably "
            "long words like antidisestablishmentarianism appeared near New York City Hall. ") * 2
    enc = tokenizer.encode_batch([text])[0]
    units = units_of(enc)
    rng = np.random.default_rng(0)
    entities = sorted({(int(i), int(i) + int(w), int(y)) for i, w, y in
                       zip(rng.integers(0, len(units) - 8, 40), rng.integers(1, 9, 40), rng.integers(1, 4, 40))})
    windows, cut = span_windows(units, len(enc), max_length, stride, text=3, entities=entities)
    assert [w.tokens for w in windows] == windows_of(len(enc), max_length, stride)
    held = set()
    for w in windows:
        a, b = w.tokens
        inside = [u for u in range(len(units)) if a <= units.first[u] and units.last[u] < b]
        assert list(range(*w.units)) == inside and w.text == 3
        assert w.firsts == [units.first[u] - a for u in inside] and w.lasts == [units.last[u] - a for u in inside]
        whole = [(i, j, y) for i, j, y in entities if inside and inside[0] <= i and j <= inside[-1] + 1]
        assert w.entities == [(i - w.units[0], j - w.units[0], y) for i, j, y in whole]
        held.update(whole)
    assert cut == len(set(entities) - held)
    if len(windows) == 1:
        assert cut == 0 and windows[0].units == (0, len(units))
    else:
        assert cut > 0  # windows of 10-14 tokens cut some of 40 entities of up to 8 words
