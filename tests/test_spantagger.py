"""SpanTagger: texts -> windows -> packed batches -> the span head -> spans in characters, on the
small BERT and span head that tests/test_span_nested.py trains on nested spans."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from tagtune.data.align import units_of, windows_of
from tagtune.data.batching import pack
from tagtune.data.candidates import batch_candidates
from tagtune.data.spandecode import decode_candidates
from tagtune.errors import TagtuneError
from tagtune.inference.spantagger import SpanTagger
from tagtune.models.spanhead import span_probabilities
from tagtune.spans import Span
from test_span_nested import MAX_WIDTH, NESTED, train_nested

LONG = " ".join(text for text, _ in NESTED)  # 40 tokens: several windows of 24


@pytest.fixture
def trained(tiny_bert):
    return train_nested(tiny_bert)


def tagger_of(trained, **settings) -> SpanTagger:
    return SpanTagger(trained.model, trained.head, trained.tokenizer, trained.labels, MAX_WIDTH, **settings)


def as_tuples(spans: list[Span]) -> set[tuple[int, int, str]]:
    return {(s.start, s.end, s.label) for s in spans}


def test_the_training_texts_give_back_their_spans(trained):
    tagger = tagger_of(trained)
    predicted = tagger.predict([text for text, _ in NESTED])
    for (text, spans), found in zip(NESTED, predicted):
        assert as_tuples(found) == set(spans), text
        assert found == sorted(found) and all(0.5 <= s.score <= 1 for s in found)


def words(text: str) -> list[tuple[int, int]]:
    """The units of ``text`` for the BERT tokenizer of these tests, found without it: the runs
    between spaces, each kanji on its own (there is no punctuation in these texts)."""
    return [m.span() for m in re.finditer(r"[\u4e00-\u9fff]|[^\s\u4e00-\u9fff]+", text)]


def test_code_points_before_a_span(trained):
    """The emoji and the kanji before the spans: offsets count code points (a UTF-16 or UTF-8
    offset would put every span after them too far right)."""
    text = "🙂 東京 Bank of Tokyo is here"
    found = tagger_of(trained)(text)
    assert [(text[s.start:s.end], s.label) for s in found] == [("東京", "LOC"), ("Bank of Tokyo", "ORG"),
                                                               ("Tokyo", "LOC")]
    # every candidate, kept by min_score 0: the stretches of up to MAX_WIDTH units, in code points
    units = words(text)
    assert units == [(0, 1), (2, 3), (3, 4), (5, 9), (10, 12), (13, 18), (19, 21), (22, 26)]
    expected = {(units[i][0], units[j][1]) for i in range(len(units)) for j in range(i, min(i + MAX_WIDTH, len(units)))}
    assert {(s.start, s.end) for s in tagger_of(trained)(text, overlap="any", min_score=0.0)} == expected


def test_one_window_is_the_head_over_the_whole_text(trained):
    """With windows long enough for the text, the spans are those of the head run directly over
    all the text's candidates in one sequence."""
    tagger = tagger_of(trained, max_length=128)
    enc = trained.tokenizer.encode_batch([LONG])[0]
    unit = units_of(enc)
    batch = pack([[trained.tokenizer.cls_id, *enc.ids, trained.tokenizer.sep_id]])
    candidates = batch_candidates([unit.first], [unit.last], [0], MAX_WIDTH)
    start, end, width = (torch.as_tensor(a) for a in (candidates.start_token, candidates.end_token, candidates.width))
    with torch.no_grad():
        hidden = trained.model.hidden_states(batch.input_ids, batch.cu_seqlens, batch.max_seqlen)
        probs = span_probabilities(trained.head(hidden, start, end, width)).numpy()
    direct = decode_candidates(candidates.start_unit, candidates.end_unit, probs, trained.labels)
    found = tagger(LONG)
    assert as_tuples(found) == {(unit.ranges[i][0], unit.ranges[j - 1][1], label) for i, j, label, _ in direct}
    np.testing.assert_allclose([s.score for s in found], [score for *_, score in direct], atol=1e-5)
    assert len(found) > 5


def brute_force(trained, text: str, max_length: int, stride: int) -> dict[tuple[int, int], np.ndarray]:
    """Each candidate's probabilities from the window, run alone, where it lies farthest from an
    edge (an edge at the text's start or end not counting; the earlier window on a tie)."""
    tokenizer, model, head = trained.tokenizer, trained.model, trained.head
    enc = tokenizer.encode_batch([text])[0]
    unit = units_of(enc)
    n = len(unit)
    best: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    for a, b in windows_of(len(enc), max_length, stride):
        held = [u for u in range(n) if unit.first[u] >= a and unit.last[u] < b]
        if not held:
            continue
        u0, u1 = held[0], held[-1] + 1
        ids = torch.tensor([tokenizer.cls_id, *enc.ids[a:b], tokenizer.sep_id])
        pairs = [(i, j) for i in range(u0, u1) for j in range(i, min(i + MAX_WIDTH, u1))]
        start = torch.tensor([1 + unit.first[i] - a for i, _ in pairs])
        end = torch.tensor([1 + unit.last[j] - a for _, j in pairs])
        width = torch.tensor([j - i for i, j in pairs])
        with torch.no_grad():
            hidden = model.hidden_states(ids, torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
            probs = span_probabilities(head(hidden, start, end, width)).numpy()
        for (i, j), p in zip(pairs, probs):
            margin = min(i - u0 if u0 > 0 else math.inf, u1 - 1 - j if u1 < n else math.inf)
            if (i, j) not in best or margin > best[i, j][0]:
                best[i, j] = (margin, p)
    return {extent: p for extent, (_, p) in best.items()}


def test_windows_take_each_candidate_from_where_it_lies_farthest_from_an_edge(trained):
    """Several windows per text, several windows per batch (a small token budget), texts of
    one and of several windows together: each candidate's probabilities are those of a brute
    force that runs every window alone."""
    tagger = tagger_of(trained, max_length=24, stride=8, batch_tokens=60)
    texts = [LONG, NESTED[0][0], LONG[::-1].swapcase(), ""]
    merged = tagger.candidates(texts)
    assert len(merged[3].start) == 0
    several = 0
    for text, found in zip(texts[:3], merged):
        several += len(windows_of(len(trained.tokenizer.encode_batch([text])[0]), 24, 8)) > 1
        expected = brute_force(trained, text, 24, 8)
        assert list(zip(found.start.tolist(), found.end.tolist())) == sorted(expected)
        np.testing.assert_allclose(found.probs, np.stack([expected[k] for k in sorted(expected)]), atol=1e-5)
    assert several == 2


def test_spans_of_a_long_text_are_whole_units_of_it(trained):
    tagger = tagger_of(trained, max_length=24, stride=8)
    found = tagger(LONG, overlap="any", min_score=0.0)
    units = words(LONG)
    starts, ends = [a for a, _ in units], [b for _, b in units]
    assert len(found) > len(units)
    for span in found:
        assert span.start in starts and span.end in ends, span
        assert 0 <= ends.index(span.end) - starts.index(span.start) < MAX_WIDTH, span
    nested = tagger(LONG)
    assert {(LONG[s.start:s.end], s.label) for s in nested} >= {("University of Tokyo", "ORG"), ("Tokyo", "LOC")}


@pytest.mark.parametrize("min_score", [0.5, 0.92])
@pytest.mark.parametrize("overlap", ["nested", "flat", "any"])
def test_overlap_and_min_score_reach_the_decoding(trained, overlap, min_score):
    tagger = tagger_of(trained)
    texts = [text for text, _ in NESTED]
    predicted = tagger.predict(texts, overlap=overlap, min_score=min_score)
    for found, merged in zip(predicted, tagger.candidates(texts)):
        ranges = merged.units.ranges
        direct = decode_candidates(merged.start, merged.end, merged.probs, trained.labels, overlap, min_score)
        assert [(s.start, s.end, s.label, s.score) for s in found] == \
            [(ranges[i][0], ranges[j - 1][1], label, score) for i, j, label, score in direct]
        assert all(s.score >= min_score for s in found)
        if overlap == "flat":
            assert all(a.end <= b.start for a, b in zip(found, found[1:]))
    if min_score == 0.5:
        nested = tagger.predict(texts)
        if overlap == "flat":  # "University of Tokyo" holds "Tokyo": a flat reading keeps one
            assert len(predicted[0]) == 1 and predicted[0][0] in nested[0]
        else:
            assert all(set(a) >= set(b) for a, b in zip(predicted, nested))


@pytest.mark.parametrize("overlap", ["nested", "flat"])
def test_uncertainty_is_that_of_the_decoding(trained, overlap):
    from tagtune.data.spandecode import chosen_candidates, span_uncertainty

    tagger = tagger_of(trained, max_length=24, stride=8)
    texts = [NESTED[0][0], LONG, "", "   "]
    spans, unsure = tagger.predict_with_uncertainty(texts, overlap=overlap)
    assert spans == tagger.predict(texts, overlap=overlap)
    assert unsure == tagger.uncertainty(texts, overlap=overlap)
    for found, value in zip(tagger.candidates(texts), unsure):
        chosen = chosen_candidates(found.start, found.end, found.probs, overlap)
        assert value == pytest.approx(span_uncertainty(found.start, found.end, found.probs, chosen, len(found.units)))
    assert unsure[2:] == [0.0, 0.0]
    if overlap == "nested":
        assert 0 < unsure[0] < 0.2 < unsure[1] < 1  # the training text is surer than the unseen long one
    else:  # a flat reading of "University of Tokyo" leaves out a span the head is sure of
        assert unsure[0] > 0.4


def test_empty_texts_and_calls_like_the_taggers(trained):
    tagger = tagger_of(trained)
    text = NESTED[0][0]
    assert tagger("") == [] and tagger("   ") == []
    assert tagger(["", text, "   \n", text]) == [[], tagger(text), [], tagger(text)]
    assert tagger([]) == []
    with pytest.raises(TagtuneError, match="text 1 is a int"):
        tagger.predict([text, 3])
    with pytest.raises(TagtuneError, match="overlap must be one of"):
        tagger(text, overlap="crossing")
    with pytest.raises(TagtuneError, match="min_score must be a number from 0 to 1"):
        tagger(text, min_score=2)


def test_runs_in_eval_mode_and_leaves_the_modes_as_they_were(trained):
    """The BERT's dropout is on in train mode: predictions match only when the tagger switches it off."""
    tagger = tagger_of(trained)

    def scores():
        return [s.score for s in tagger("John Smith met Mary Jones", overlap="any", min_score=0.0)]

    expected = scores()
    trained.model.train()
    try:
        assert scores() == expected
        assert trained.model.training and not trained.head.training
    finally:
        trained.model.eval()


def test_a_head_that_does_not_fit_the_labels_or_widths(trained):
    with pytest.raises(ValueError, match="5 outputs, not none and the 5 labels"):
        SpanTagger(trained.model, trained.head, trained.tokenizer, [*trained.labels, "EXTRA"], MAX_WIDTH)
    with pytest.raises(ValueError, match="max_width must be from 1 to the head's 4"):
        SpanTagger(trained.model, trained.head, trained.tokenizer, trained.labels, MAX_WIDTH + 1)
    narrow = SpanTagger(trained.model, trained.head, trained.tokenizer, trained.labels, 2)
    assert all(len(LONG[s.start:s.end].split()) <= 2 for s in narrow(LONG, overlap="any", min_score=0.0))
