"""Constrained (Viterbi) and argmax decoding, and tags -> character spans."""

import itertools
import random

import numpy as np
import pytest

from tagtune.data.decode import (
    Transitions,
    argmax_decode,
    decode,
    decode_spans,
    spans_and_uncertainty,
    spans_from_tags,
    uncertainty,
    viterbi,
)
from tagtune.data.schemes import tag_names, tags_for_entities, transition_mask
from tagtune import Span


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


def log_softmax(x):
    """Reference log-softmax in float64, independent of decode.py."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


@pytest.mark.parametrize("scheme,labels", CASES)
def test_viterbi_equals_brute_force(scheme, labels):
    rng = np.random.default_rng(1)
    batch, length = 6, 4
    for _ in range(4):
        logits = (rng.standard_normal((batch, length, len(labels))) * 3).astype(np.float32)
        lengths = rng.integers(0, length + 1, batch)
        lengths[0] = length
        mask = np.arange(length)[None, :] < lengths[:, None]
        ids = viterbi(logits, mask, *transition_mask(labels, scheme))
        assert ids.dtype == np.int64 and ids.shape == (batch, length)
        scores = log_softmax(logits)
        for b in range(batch):
            n = int(lengths[b])
            assert ids[b, :n].tolist() == brute_force(scores[b, :n], labels, scheme)
            assert ids[b, n:].tolist() == [0] * (length - n)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES", "IO"])
def test_viterbi_output_is_always_valid(scheme):
    rng = np.random.default_rng(2)
    labels = tag_names(["LOC", "MISC", "ORG", "PER"], scheme)
    logits = rng.standard_normal((32, 40, len(labels))) * 4
    lengths = rng.integers(1, 41, 32)
    mask = np.arange(40)[None, :] < lengths[:, None]
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
    labels = tag_names(["A", "B", "C"], scheme)
    index = {tag: i for i, tag in enumerate(labels)}
    batch, length = 16, 20
    logits = np.random.default_rng(3).random((batch, length, len(labels))) * 2
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
    mask = np.ones((batch, length), dtype=bool)
    assert np.array_equal(viterbi(logits, mask, *transition_mask(labels, scheme)), raw)


def test_viterbi_edge_cases():
    labels = tag_names(["A"], "BIO")
    constraints = transition_mask(labels, "BIO")
    # no positions; a row that is all padding
    assert viterbi(np.zeros((2, 0, 3)), np.zeros((2, 0), dtype=bool), *constraints).shape == (2, 0)
    mask = np.array([[True, True, False], [False, False, False]])
    logits = np.array([[[0.0, 0.0, 9.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]] * 2)
    # I-A is never first: the best allowed start is B-A, then I-A
    assert viterbi(logits, mask, *constraints).tolist() == [[1, 2, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="first"):
        viterbi(logits, np.array([[True, False, True]] * 2), *constraints)


def test_viterbi_respects_end_constraint():
    labels = tag_names(["A"], "BIOES")  # O B-A I-A E-A S-A
    logits = np.full((1, 2, 5), -5.0)
    logits[0, 0, 1] = 5.0  # B-A
    logits[0, 1, 2] = 5.0  # I-A: may not end a sequence
    logits[0, 1, 3] = 4.0  # E-A
    ids = viterbi(logits, np.ones((1, 2), dtype=bool), *transition_mask(labels, "BIOES"))
    assert ids.tolist() == [[1, 3]]


def test_torch_tensors_are_accepted():
    """Callers holding torch logits (the PyTorch backend, benchmarks) decode them as they are."""
    torch = pytest.importorskip("torch")
    labels = tag_names(["A", "B"], "BIO")
    logits = torch.randn(3, 7, len(labels), dtype=torch.float64) * 3
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    as_numpy = viterbi(logits.numpy(), mask.numpy(), *transition_mask(labels, "BIO"))
    assert np.array_equal(viterbi(logits, mask, *transition_mask(labels, "BIO")), as_numpy)
    assert decode(logits.bfloat16(), labels, mask=mask)[0] == decode(logits.bfloat16().float().numpy(), labels,
                                                                      mask=mask.numpy())[0]


def test_spans_from_tags_literal():
    text = "Ada Lovelace met Charles Babbage in London"
    ranges = [(0, 3), (4, 12), (13, 16), (17, 24), (25, 32), (33, 35), (36, 42)]
    tags = ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC"]
    spans = spans_from_tags(tags, ranges, "BIO", scores=[0.75, 0.5, 0.25])  # one score per entity
    assert spans == [Span(0, 12, "PER"), Span(17, 32, "PER"), Span(36, 42, "LOC")]
    assert [text[s.start:s.end] for s in spans] == ["Ada Lovelace", "Charles Babbage", "London"]
    assert [s.score for s in spans] == [0.75, 0.5, 0.25]
    assert all(s.score is None for s in spans_from_tags(tags, ranges, "BIO"))
    with pytest.raises(ValueError, match="3 entities but 7 scores"):  # per-position numbers are not span scores
        spans_from_tags(tags, ranges, "BIO", scores=[0.9, 0.7, 0.99, 0.6, 0.8, 0.95, 0.5])
    # argmax output that breaks BIO is read the conlleval way: I- after O opens an entity,
    # a type switch splits one
    broken = ["I-PER", "I-PER", "O", "B-PER", "I-LOC", "O", "O"]
    assert spans_from_tags(broken, ranges, "BIO", scores=[0.1, 0.2, 0.3]) == [
        Span(0, 12, "PER"), Span(17, 24, "PER"), Span(25, 32, "LOC")]
    assert spans_from_tags(broken, ranges, "BIO", scores=[0.1, 0.2, 0.3])[2].score == 0.3
    bioes = ["B-PER", "E-PER", "O", "S-PER", "S-PER", "O", "S-LOC"]
    assert spans_from_tags(bioes, ranges, "BIOES") == [
        Span(0, 12, "PER"), Span(17, 24, "PER"), Span(25, 32, "PER"), Span(36, 42, "LOC")]
    assert spans_from_tags([], [], "BIO", scores=[]) == []
    with pytest.raises(ValueError):
        spans_from_tags(["O"], [], "BIO")


def test_decode():
    labels = tag_names(["A"], "BIO")  # O B-A I-A
    logits = np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0], [2.0, 0.0, 0.0]], dtype=np.float32)
    softmax = np.exp(log_softmax(logits))
    ids, probs = decode(logits, labels, "BIO", constrained=False)
    assert ids == [2, 2, 0]
    assert probs == pytest.approx(softmax[[0, 1, 2], [2, 2, 0]].tolist(), rel=1e-6)
    ids, probs = decode(logits, labels, "BIO")
    assert ids == [1, 2, 0]
    assert probs == pytest.approx(softmax[[0, 1, 2], [1, 2, 0]].tolist(), rel=1e-6)

    batch = np.stack([logits, logits])
    mask = np.array([[True, True, True], [True, False, False]])
    ids, probs = decode(batch, labels, "BIO", mask=mask)
    assert ids == [[1, 2, 0], [1]]
    assert len(probs[0]) == 3 and len(probs[1]) == 1
    ids, _ = decode(batch, labels, "BIO", constrained=False, mask=mask)
    assert ids == [[2, 2, 0], [2]]
    with pytest.raises(ValueError):
        decode(logits, labels[:2])


@pytest.mark.parametrize("case", ["plain", "unconstrained", "crf"])
def test_spans_and_uncertainty_are_decode_spans_and_uncertainty(case):
    """One decode and one lattice give what the two calls give apart."""
    labels = tag_names(["A", "B"], "BIO")
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(6, 9, len(labels))).astype(np.float32)
    logits[[1, 4], :, labels.index("O")] += 20.0  # two texts without spans
    lengths = [9, 4, 1, 7, 9, 2]
    mask = np.arange(9)[None, :] < np.array(lengths)[:, None]
    ranges = [[(2 * i, 2 * i + 1) for i in range(n)] for n in lengths]
    n = len(labels)
    crf = Transitions(rng.normal(size=n), rng.normal(size=(n, n)), rng.normal(size=n)) if case == "crf" else None
    kwargs = dict(scheme="BIO", constrained=case != "unconstrained", mask=mask, transitions=crf)
    spans, unsure = spans_and_uncertainty(logits, labels, ranges, **kwargs)
    assert spans == decode_spans(logits, labels, ranges, **kwargs)
    assert any(spans) and not all(spans)
    np.testing.assert_allclose(unsure, uncertainty(logits, labels, **kwargs), rtol=1e-12, atol=0)
