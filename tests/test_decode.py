"""Constrained (Viterbi) and argmax decoding, and tags -> character spans."""

import itertools
import random

import pytest
import torch

from tagtune.decode import argmax_decode, decode, spans_from_tags, viterbi
from tagtune.schemes import tag_names, tags_for_entities, transition_mask
from tagtune.spans import Span


def valid(tags, scheme):
    """Whether ``tags`` obey ``scheme``, written out rule by rule (independent of schemes.py)."""
    if scheme == "IO":
        return True
    previous = "O"
    for tag in tags + ["O"]:
        prefix, kind = tag[0], tag[2:]
        open_kind = previous[2:] if previous[0] in "BI" else None
        if scheme == "BIO":
            if prefix == "I" and open_kind != kind:
                return False
        else:
            if prefix in "IE" and open_kind != kind:
                return False
            if prefix in "BSO" and previous[0] in "BI":
                return False
        previous = tag
    return True


def brute_force(scores, labels, scheme):
    """Best allowed sequence by trying them all; ``scores`` (n, L) log-probabilities."""
    n, num = scores.shape
    best, best_path = float("-inf"), None
    for path in itertools.product(range(num), repeat=n):
        if not valid([labels[i] for i in path], scheme):
            continue
        total = sum(scores[t, i].item() for t, i in enumerate(path))
        if total > best:
            best, best_path = total, list(path)
    return best_path


CASES = [
    ("BIO", tag_names(["A", "B"], "BIO")),
    ("BIOES", tag_names(["A"], "BIOES")),
    ("IO", tag_names(["A", "B"], "IO")),
]


@pytest.mark.parametrize("scheme,labels", CASES)
def test_viterbi_equals_brute_force(scheme, labels):
    torch.manual_seed(1)
    batch, length = 6, 4
    for _ in range(4):
        logits = torch.randn(batch, length, len(labels)) * 3
        lengths = torch.randint(0, length + 1, (batch,))
        lengths[0] = length
        mask = torch.arange(length)[None, :] < lengths[:, None]
        ids = viterbi(logits, mask, *transition_mask(labels, scheme))
        assert ids.dtype == torch.long and ids.shape == (batch, length)
        scores = logits.log_softmax(-1)
        for b in range(batch):
            n = int(lengths[b])
            assert ids[b, :n].tolist() == brute_force(scores[b, :n], labels, scheme)
            assert ids[b, n:].tolist() == [0] * (length - n)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES", "IO"])
def test_viterbi_output_is_always_valid(scheme):
    torch.manual_seed(2)
    labels = tag_names(["LOC", "MISC", "ORG", "PER"], scheme)
    logits = torch.randn(32, 40, len(labels)) * 4
    lengths = torch.randint(1, 41, (32,))
    mask = torch.arange(40)[None, :] < lengths[:, None]
    ids = viterbi(logits, mask, *transition_mask(labels, scheme))
    raw = argmax_decode(logits)
    broken = 0
    for b in range(32):
        n = int(lengths[b])
        assert valid([labels[i] for i in ids[b, :n].tolist()], scheme)
        broken += not valid([labels[i] for i in raw[b, :n].tolist()], scheme)
    if scheme != "IO":
        assert broken > 0  # the test means something: argmax alone does break the rules


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_viterbi_equals_argmax_when_argmax_is_valid(scheme):
    rng = random.Random(3)
    torch.manual_seed(3)
    labels = tag_names(["A", "B", "C"], scheme)
    index = {tag: i for i, tag in enumerate(labels)}
    batch, length = 16, 20
    logits = torch.rand(batch, length, len(labels)) * 2
    for b in range(batch):
        entities, i = [], 0
        while i < length:
            end = min(length, i + rng.randint(1, 4))
            if rng.random() < 0.5:
                entities.append((i, end, rng.choice("ABC")))
            i = end
        for t, tag in enumerate(tags_for_entities(length, entities, scheme)):
            logits[b, t, index[tag]] += 2.5  # surely the argmax, though not by a landslide
    raw = argmax_decode(logits)
    assert all(valid([labels[i] for i in row], scheme) for row in raw.tolist())
    mask = torch.ones(batch, length, dtype=torch.bool)
    assert torch.equal(viterbi(logits, mask, *transition_mask(labels, scheme)), raw)


def test_viterbi_edge_cases():
    labels = tag_names(["A"], "BIO")
    constraints = transition_mask(labels, "BIO")
    # no positions; a row that is all padding
    assert viterbi(torch.randn(2, 0, 3), torch.zeros(2, 0, dtype=torch.bool), *constraints).shape == (2, 0)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    logits = torch.tensor([[[0.0, 0.0, 9.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]] * 2)
    # I-A is never first: the best allowed start is B-A, then I-A
    assert viterbi(logits, mask, *constraints).tolist() == [[1, 2, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="first"):
        viterbi(logits, torch.tensor([[True, False, True]] * 2), *constraints)


def test_viterbi_respects_end_constraint():
    labels = tag_names(["A"], "BIOES")  # O B-A I-A E-A S-A
    logits = torch.full((1, 2, 5), -5.0)
    logits[0, 0, 1] = 5.0  # B-A
    logits[0, 1, 2] = 5.0  # I-A: may not end a sequence
    logits[0, 1, 3] = 4.0  # E-A
    ids = viterbi(logits, torch.ones(1, 2, dtype=torch.bool), *transition_mask(labels, "BIOES"))
    assert ids.tolist() == [[1, 3]]


def test_spans_from_tags_literal():
    text = "Ada Lovelace met Charles Babbage in London"
    ranges = [(0, 3), (4, 12), (13, 16), (17, 24), (25, 32), (33, 35), (36, 42)]
    tags = ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC"]
    probs = [0.9, 0.7, 0.99, 0.6, 0.8, 0.95, 0.5]
    spans = spans_from_tags(tags, ranges, "BIO", probs)
    assert spans == [Span(0, 12, "PER"), Span(17, 32, "PER"), Span(36, 42, "LOC")]
    assert [text[s.start:s.end] for s in spans] == ["Ada Lovelace", "Charles Babbage", "London"]
    assert [s.score for s in spans] == [pytest.approx(0.8), pytest.approx(0.7), pytest.approx(0.5)]
    assert all(s.score is None for s in spans_from_tags(tags, ranges, "BIO"))
    # argmax output that breaks BIO is read the conlleval way: I- after O opens an entity,
    # a type switch splits one
    broken = ["I-PER", "I-PER", "O", "B-PER", "I-LOC", "O", "O"]
    assert spans_from_tags(broken, ranges, "BIO", probs) == [
        Span(0, 12, "PER"), Span(17, 24, "PER"), Span(25, 32, "LOC")]
    assert spans_from_tags(broken, ranges, "BIO", probs)[2].score == pytest.approx(0.8)
    bioes = ["B-PER", "E-PER", "O", "S-PER", "S-PER", "O", "S-LOC"]
    assert spans_from_tags(bioes, ranges, "BIOES") == [
        Span(0, 12, "PER"), Span(17, 24, "PER"), Span(25, 32, "PER"), Span(36, 42, "LOC")]
    assert spans_from_tags([], [], "BIO", []) == []
    with pytest.raises(ValueError):
        spans_from_tags(["O"], [], "BIO")


def test_decode():
    labels = tag_names(["A"], "BIO")  # O B-A I-A
    logits = torch.tensor([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    ids, probs = decode(logits, labels, "BIO", constrained=False)
    assert ids == [2, 2, 0]
    assert probs == pytest.approx(logits.softmax(-1)[[0, 1, 2], [2, 2, 0]].tolist())
    ids, probs = decode(logits, labels, "BIO")
    assert ids == [1, 2, 0]
    assert probs == pytest.approx(logits.softmax(-1)[[0, 1, 2], [1, 2, 0]].tolist())

    batch = torch.stack([logits, logits])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    ids, probs = decode(batch, labels, "BIO", mask=mask)
    assert ids == [[1, 2, 0], [1]]
    assert len(probs[0]) == 3 and len(probs[1]) == 1
    ids, _ = decode(batch, labels, "BIO", constrained=False, mask=mask)
    assert ids == [[2, 2, 0], [2]]
    with pytest.raises(ValueError):
        decode(logits, labels[:2])
