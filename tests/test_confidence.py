"""Span probabilities: forward-backward over the scheme's tag lattice against brute-force
enumeration of every path, tag marginals, spans read as conlleval reads them, and large logits."""

import itertools
import warnings

import numpy as np
import pytest

from tagtune.data.decode import decode, decode_spans, forward_backward, span_probabilities
from tagtune.data.schemes import chunk_relations, chunks, entities_from_tags, parse_tag, tag_names, transition_mask

LABEL_SETS = [
    ("BIO", ["A"]), ("BIO", ["A", "B"]),
    ("BIOES", ["A"]), ("BIOES", ["A", "B"]),
    ("IO", ["A"]), ("IO", ["A", "B", "C"]),
]


def log_softmax(x):
    """Reference log-softmax in float64, independent of decode.py."""
    x = np.asarray(x, dtype=np.float64)
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def everything_allowed(n):
    return np.ones(n, dtype=bool), np.ones((n, n), dtype=bool), np.ones(n, dtype=bool)


def enumerate_paths(logits, labels, scheme, constraints):
    """Every allowed path of one sequence ``logits: (n, L)``, by brute force: log Z, the tag
    marginals ``(n, L)`` and ``{(start, end, type): probability}`` of every entity any path has."""
    start, trans, end = constraints
    scores = log_softmax(logits)
    n, size = scores.shape
    paths, weights = [], []
    for path in itertools.product(range(size), repeat=n):
        if start[path[0]] and end[path[-1]] and all(trans[a, b] for a, b in zip(path, path[1:])):
            paths.append(path)
            weights.append(sum(scores[t, y] for t, y in enumerate(path)))
    if not paths:
        return -np.inf, np.zeros((n, size)), {}
    weights = np.array(weights)
    log_z = weights.max() + np.log(np.exp(weights - weights.max()).sum())
    probs = np.exp(weights - log_z)
    marginals = np.zeros((n, size))
    spans: dict = {}
    for path, p in zip(paths, probs):
        marginals[np.arange(n), path] += p
        for entity in entities_from_tags([labels[y] for y in path], scheme):
            spans[entity] = spans.get(entity, 0.0) + p
    return log_z, marginals, spans


def random_batch(rng, size, lengths, scale=3.0):
    logits = rng.standard_normal((len(lengths), max(lengths), size)) * scale
    mask = np.arange(max(lengths))[None, :] < np.array(lengths)[:, None]
    return logits, mask


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "argmax"])
@pytest.mark.parametrize("scheme, types", LABEL_SETS)
def test_lattice_equals_brute_force(scheme, types, constrained):
    """log Z, every tag marginal and the probability of every span any allowed path has, in a
    padded batch with rows of lengths 1 to 5."""
    labels = tag_names(types, scheme)
    constraints = transition_mask(labels, scheme) if constrained else everything_allowed(len(labels))
    rng = np.random.default_rng(len(labels) * 10 + constrained)
    lengths = [5, 1, 3, 2, 4]
    logits, mask = random_batch(rng, len(labels), lengths)
    lattice = forward_backward(logits, mask, *constraints)
    marginals = lattice.marginals()
    assert marginals.shape == logits.shape
    asked, want = [], []
    for row, n in enumerate(lengths):
        log_z, tags, spans = enumerate_paths(logits[row, :n], labels, scheme, constraints)
        assert lattice.log_z[row] == pytest.approx(log_z, abs=1e-9)
        np.testing.assert_allclose(marginals[row, :n], tags, atol=1e-12)
        np.testing.assert_allclose(marginals[row, :n].sum(axis=1), 1.0, atol=1e-12)
        assert not marginals[row, n:].any()  # padding
        for (i, j, kind), p in spans.items():
            asked.append((row, i, j, kind))
            want.append(p)
        for i in range(n):  # spans no path has: probability 0
            for j in range(i + 1, n + 1):
                for kind in types:
                    if (i, j, kind) not in spans:
                        asked.append((row, i, j, kind))
                        want.append(0.0)
    got = span_probabilities(lattice, labels, asked)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert ((got >= 0) & (got <= 1)).all()
    if not constrained:
        np.testing.assert_allclose(lattice.log_z, 0.0, atol=1e-12)  # a product of softmaxes sums to 1


def test_argmax_lattice_is_the_product_of_positions():
    """With every path allowed, a BIO span i..j of X needs X to begin at i (B-X, or I-X after a
    tag that is no X), I-X after it, and no I-X at j+1; the positions are independent."""
    labels = tag_names(["X", "Y"], "BIO")  # O B-X I-X B-Y I-Y
    rng = np.random.default_rng(5)
    logits, mask = random_batch(rng, len(labels), [6])
    p = np.exp(log_softmax(logits[0]))
    lattice = forward_backward(logits, mask, *everything_allowed(len(labels)))
    for i in range(6):
        for j in range(i + 1, 7):
            before = p[i - 1, 1] + p[i - 1, 2] if i > 0 else 0.0
            after = p[j, 2] if j < 6 else 0.0
            expected = (p[i, 1] + p[i, 2] * (1 - before)) * p[i + 1:j, 2].prod() * (1 - after)
            assert span_probabilities(lattice, labels, [(0, i, j, "X")])[0] == pytest.approx(expected, abs=1e-12)


def test_io_adjacent_units_of_one_type_are_one_span():
    """Under IO a run of I-X is one entity: units 0..1 are a span of X only if unit 2 is not I-X."""
    labels = tag_names(["X"], "IO")  # O I-X
    logits = np.log(np.array([[[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]]]))
    lattice = forward_backward(logits, np.ones((1, 3), dtype=bool), *transition_mask(labels, "IO"))
    got = span_probabilities(lattice, labels, [(0, 0, 2, "X"), (0, 0, 1, "X"), (0, 0, 3, "X")])
    assert got.tolist() == pytest.approx([0.9 * 0.8 * 0.7, 0.9 * 0.2, 0.9 * 0.8 * 0.3])


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "argmax"])
@pytest.mark.parametrize("scheme, types", LABEL_SETS)
def test_decoded_spans_carry_their_probability(scheme, types, constrained):
    """decode_spans: the spans of the decoded tags, each scored with its brute-force probability."""
    labels = tag_names(types, scheme)
    constraints = transition_mask(labels, scheme) if constrained else everything_allowed(len(labels))
    rng = np.random.default_rng(7)
    lengths = [4, 2, 3, 1]
    logits, mask = random_batch(rng, len(labels), lengths, scale=2.0)
    ranges = [[(2 * t, 2 * t + 1) for t in range(n)] for n in lengths]
    decoded = decode_spans(logits, labels, ranges, scheme, constrained, mask)
    ids, _ = decode(logits, labels, scheme, constrained, mask)
    assert len(decoded) == len(lengths)
    for row, n in enumerate(lengths):
        _, _, spans = enumerate_paths(logits[row, :n], labels, scheme, constraints)
        entities = entities_from_tags([labels[k] for k in ids[row]], scheme)
        assert [(s.start, s.end, s.label) for s in decoded[row]] == [(2 * i, 2 * j - 1, kind)
                                                                    for i, j, kind in entities]
        for span, entity in zip(decoded[row], entities):
            assert 0 < span.score <= 1
            assert span.score == pytest.approx(spans[entity], abs=1e-9)
    one = decode_spans(logits[0, :4], labels, ranges[0], scheme, constrained)  # one sequence, no mask
    assert one == decoded[0] and [s.score for s in one] == pytest.approx([s.score for s in decoded[0]])


@pytest.mark.parametrize("scheme", ["BIO", "BIOES", "IO"])
def test_peaked_logits_give_probability_one(scheme):
    labels = tag_names(["A", "B"], scheme)
    tags = {"BIO": ["B-A", "I-A", "O", "B-B", "B-A"], "BIOES": ["B-A", "E-A", "O", "S-B", "S-A"],
            "IO": ["I-A", "I-A", "O", "I-B", "I-A"]}[scheme]
    for scale in (60.0, 1e4, 1e30):
        logits = np.zeros((5, len(labels)))
        logits[np.arange(5), [labels.index(t) for t in tags]] = scale
        for constrained in (True, False):
            spans = decode_spans(logits, labels, [(t, t + 1) for t in range(5)], scheme, constrained)
            assert [(s.start, s.end, s.label) for s in spans] == [(0, 2, "A"), (3, 4, "B"), (4, 5, "A")]
            assert [s.score for s in spans] == [1.0, 1.0, 1.0]


def test_a_predicted_span_is_never_above_one():
    rng = np.random.default_rng(11)
    labels = tag_names(["A", "B", "C"], "BIOES")
    logits, mask = random_batch(rng, len(labels), [40, 17, 33, 1], scale=6.0)
    ranges = [[(t, t + 1) for t in range(n)] for n in mask.sum(axis=1)]
    for constrained in (True, False):
        scores = [s.score for row in decode_spans(logits, labels, ranges, "BIOES", constrained, mask) for s in row]
        assert scores and all(0 < s <= 1 for s in scores)


@pytest.fixture
def strict_numpy():
    """Any NaN, division by zero or overflow numpy meets, and any warning, is an error."""
    with warnings.catch_warnings(), np.errstate(invalid="raise", divide="raise", over="raise"):
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_large_logits_equal_brute_force_without_nan(scheme, strict_numpy):
    """Log-probabilities thousands apart, the best tags often forbidden: sums stay exact."""
    labels = tag_names(["A", "B"], "BIO") if scheme == "BIO" else tag_names(["A"], "BIOES")
    constraints = transition_mask(labels, scheme)
    rng = np.random.default_rng(13)
    lengths = [4, 3, 1]
    for scale in (1e3, 1e5):
        logits, mask = random_batch(rng, len(labels), lengths, scale=scale)
        lattice = forward_backward(logits, mask, *constraints)
        marginals = lattice.marginals()
        assert np.isfinite(lattice.log_z).all() and np.isfinite(marginals).all()
        for row, n in enumerate(lengths):
            log_z, tags, spans = enumerate_paths(logits[row, :n], labels, scheme, constraints)
            assert lattice.log_z[row] == pytest.approx(log_z, rel=1e-9)
            np.testing.assert_allclose(marginals[row, :n], tags, atol=1e-9)
            asked = [(row, *entity) for entity in spans]
            np.testing.assert_allclose(span_probabilities(lattice, labels, asked), list(spans.values()), atol=1e-9)


def test_an_allowed_path_far_below_the_best_prefix_is_not_lost(strict_numpy):
    """B-Y scores 1000 above B-X at unit 0, but only B-X may precede the I-X that unit 1 is
    sure of: B-X I-X is all but certain, although exp(-1000) underflows in any sum with B-Y."""
    labels = tag_names(["X", "Y"], "BIO")  # O B-X I-X B-Y I-Y
    logits = np.zeros((1, 2, 5))
    logits[0, 0, 3], logits[0, 0, 1] = 2000.0, 1000.0
    logits[0, 1, 2] = 3000.0
    lattice = forward_backward(logits, np.ones((1, 2), dtype=bool), *transition_mask(labels, "BIO"))
    marginals = lattice.marginals()
    assert marginals[0, 0, 1] == pytest.approx(1.0) and marginals[0, 1, 2] == pytest.approx(1.0)
    assert span_probabilities(lattice, labels, [(0, 0, 2, "X")])[0] == pytest.approx(1.0)
    (span,) = decode_spans(logits[0], labels, [(0, 3), (4, 9)])
    assert (span.start, span.end, span.label, span.score) == (0, 9, "X", pytest.approx(1.0))


def test_padding_rows_and_lattices_without_an_allowed_path(strict_numpy):
    labels = tag_names(["A"], "BIO")
    logits = np.random.default_rng(17).standard_normal((3, 4, 3)) * 50
    mask = np.array([[True] * 4, [False] * 4, [True, True, False, False]])
    lattice = forward_backward(logits, mask, *transition_mask(labels, "BIO"))
    marginals = lattice.marginals()
    assert np.isfinite(marginals).all() and not marginals[1].any() and not marginals[2, 2:].any()
    np.testing.assert_allclose(marginals[mask].sum(axis=1), 1.0)
    assert decode_spans(logits, labels, [[(0, 1)] * 4, [], [(0, 1)] * 2], mask=mask)[1] == []
    # only I-A, which may not start a BIO sequence: no path at all
    forbidden = forward_backward(logits[:, :, :1], mask, np.zeros(1, bool), np.ones((1, 1), bool), np.ones(1, bool))
    assert np.isneginf(forbidden.log_z[[0, 2]]).all()
    assert not forbidden.marginals().any()
    assert span_probabilities(forbidden, ["I-A"], [(0, 0, 2, "A"), (2, 1, 2, "A")]).tolist() == [0.0, 0.0]
    # no positions at all
    empty = forward_backward(np.zeros((2, 0, 3)), np.zeros((2, 0), bool), *transition_mask(labels, "BIO"))
    assert empty.marginals().shape == (2, 0, 3) and span_probabilities(empty, labels, []).shape == (0,)


def test_spans_outside_their_row_are_refused():
    labels = tag_names(["A"], "BIO")
    lattice = forward_backward(np.zeros((1, 3, 3)), np.array([[True, True, False]]), *transition_mask(labels, "BIO"))
    for bad in [(0, 0, 3, "A"), (0, 1, 1, "A"), (0, -1, 1, "A")]:
        with pytest.raises(ValueError, match="not a non-empty range"):
            span_probabilities(lattice, labels, [bad])


def test_chunk_relations_read_tags_as_chunks_does():
    labels = tag_names(["A", "B"], "BIOES")
    begins, continues = chunk_relations(labels)
    for (a, x), (b, y) in itertools.product(enumerate(labels), repeat=2):
        second_begins = any(start == 1 for start, _, _ in chunks([parse_tag(x), parse_tag(y)]))
        assert begins[a, b] == (y != "O" and second_begins), (x, y)
        assert continues[a, b] == (x != "O" and y != "O" and not second_begins), (x, y)
