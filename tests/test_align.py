"""Char spans -> subword labels -> char spans, windows over long texts, packed batches."""

import numpy as np
import pytest

from tagtune.data.align import IGNORE, merge_windows, token_labels, unit_entities, units_of, window_bounds
from tagtune.data.batching import batch_indices, pack, pad
from tagtune.data.decode import spans_from_tags
from tagtune.data.schemes import SCHEMES, tag_names
from tagtune import Span
from tagtune.text.tokenizer import load_tokenizer

TEXT = "Barack Obama met Angela Merkel at the Brandenburg Gate in Berlin on Tuesday."
SPANS = [Span(0, 12, "PER"), Span(17, 30, "PER"), Span(38, 54, "LOC"), Span(58, 64, "LOC")]


def round_trip(tokenizer, text, spans, scheme="BIO", all_subwords=False):
    labels = tag_names(sorted({s.label for s in spans}) or ["X"], scheme)
    label2id = {t: i for i, t in enumerate(labels)}
    enc = tokenizer.encode(text)
    ids, stats = token_labels(spans, enc, label2id, scheme, all_subwords)
    units = units_of(enc, all_subwords)
    tags = [labels[ids[t]] for t in units.first]
    assert all(ids[t] == IGNORE for t in range(len(ids)) if t not in set(units.first))
    return spans_from_tags(tags, units.ranges, scheme), stats


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("all_subwords", [False, True])
def test_english_round_trip(minilm, scheme, all_subwords):
    spans, stats = round_trip(load_tokenizer(minilm), TEXT, SPANS, scheme, all_subwords)
    assert spans == SPANS and stats.message() is None
    for span in spans:
        assert TEXT[span.start:span.end] in ("Barack Obama", "Angela Merkel", "Brandenburg Gate", "Berlin")


def test_first_subword_carries_the_label(minilm):
    tokenizer = load_tokenizer(minilm)
    text = "Zuckerberg visited Strasbourg"
    enc = tokenizer.encode(text)
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    ids, _ = token_labels([Span(0, 10, "PER"), Span(19, 29, "LOC")], enc, label2id, "BIO")
    assert enc.tokens[:3] == ["zu", "##cker", "##berg"]
    words = {}
    for token, word, label in zip(enc.tokens, enc.words, ids):
        words.setdefault(word, []).append(label)
    assert list(words.values()) == [[1, IGNORE, IGNORE], [0], [3] + [IGNORE] * (len(words[2]) - 1)]


def test_spans_inside_words_are_widened_and_counted(minilm):
    tokenizer = load_tokenizer(minilm)
    enc = tokenizer.encode("unbelievable things happened")
    units = units_of(enc)
    entities, stats = unit_entities([Span(2, 8, "X"), Span(13, 16, "Y"), Span(12, 13, "Z")], units, "f.jsonl:3")
    assert entities == [(0, 1, "X"), (1, 2, "Y")]
    assert (stats.widened, stats.dropped_empty, stats.dropped_overlap) == (2, 1, 0)
    assert "2 widened to token boundaries" in stats.message() and "f.jsonl:3" in stats.message()
    # after widening, a second span in the same word has no unit of its own
    _, stats = unit_entities([Span(0, 2, "A"), Span(4, 6, "B")], units)
    assert stats.dropped_overlap == 1


def test_window_bounds_cover_the_text_with_overlap():
    assert window_bounds(5, 10, 2) == [(0, 5)]
    assert window_bounds(0, 10, 2) == [(0, 0)]
    assert window_bounds(25, 10, 2) == [(0, 10), (8, 18), (15, 25)]
    for length in range(1, 60):
        bounds = window_bounds(length, 7, 3)
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        assert all(b - a <= 7 for a, b in bounds)
        assert all(b[0] < a[1] for a, b in zip(bounds, bounds[1:]))  # consecutive windows overlap


def test_merge_takes_each_token_from_its_most_central_window():
    bounds = window_bounds(25, 10, 4)
    outputs = [np.array([[k * 100 + t] for t in range(a, b)]) for k, (a, b) in enumerate(bounds)]
    merged = merge_windows(bounds, outputs)
    assert merged.shape == (25, 1)
    assert [int(x) % 100 for x in merged[:, 0]] == list(range(25))  # every token once, in order
    for t, value in enumerate(merged[:, 0].tolist()):
        k = value // 100
        a, b = bounds[k]
        distance = min(t - a, b - 1 - t)
        best = max(min(t - a2, b2 - 1 - t) for a2, b2 in bounds if a2 <= t < b2)
        assert distance >= best - 1  # at most one token off the exact middle of the overlap


def test_pack_and_batches():
    batch = pack([[1, 2, 3], [4, 5], [6]], [[0, 1, 0], [1, 1], [-100]])
    assert batch.input_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 6]
    assert batch.labels.tolist() == [0, 1, 0, 1, 1, -100] and batch.max_seqlen == 3
    lengths = [5, 50, 7, 30, 2, 90, 12]
    assert batch_indices(lengths, max_tokens=100) == [[5], [1, 3, 6, 2], [0, 4]]
    a = batch_indices(lengths, batch_size=3, seed=1, epoch=0)
    assert a == batch_indices(lengths, batch_size=3, seed=1, epoch=0)
    assert a != batch_indices(lengths, batch_size=3, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(7)) and [len(b) for b in a] == [3, 3, 1]
    budget = batch_indices(lengths, max_tokens=60, seed=3, bucket=True)
    assert sorted(i for b in budget for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 60 or len(b) == 1 for b in budget)


def test_bucketed_batches_stay_within_their_pool():
    """Attention's padded layout (sequences x longest) stays near the token budget: no batch
    takes one pool's shortest sequences together with the next pool's longest."""
    lengths = np.random.default_rng(0).integers(2, 100, 2000).tolist()
    for seed in range(3):
        batches = batch_indices(lengths, max_tokens=500, seed=seed, bucket=True)
        assert sorted(i for b in batches for i in b) == list(range(2000))
        assert max(len(b) * max(lengths[i] for i in b) for b in batches) <= 1000
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        assert padded < 1.05 * sum(lengths)


def test_pad():
    ids, mask = pad([[1, 2, 3], [4, 5], [6]], pad_id=9)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.tolist() == [[1, 2, 3], [4, 5, 9], [6, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert pad([])[0].shape == (0, 0)
