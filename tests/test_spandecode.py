"""Span head decoding: candidate probabilities -> flat, nested or overlapping spans, window merging,
uncertainty; checked against brute force over every subset of small random cases."""

import math
import random
import subprocess
import sys

import numpy as np
import pytest

from tagtune.data.align import merge_windows, window_bounds
from tagtune.data.spandecode import (
    chosen_candidates,
    decode_candidates,
    merge_window_candidates,
    span_uncertainty,
)
from tagtune.errors import TagtuneError

# rows [none, A, B] whose label / none ratio is a power of two (4, 2, 1, 1/2), so that sums of
# their weights tie exactly; the 0.4 / 0.4 row (ratio 1) is never chosen by flat or nested
TIED_ROWS = {
    1: [[0.2, 0.8], [1 / 3, 2 / 3], [0.5, 0.5], [2 / 3, 1 / 3]],
    2: [[0.2, 0.8, 0.0], [0.2, 0.0, 0.8], [0.3, 0.6, 0.1], [0.3, 0.1, 0.6], [0.4, 0.4, 0.2], [0.5, 0.25, 0.25]],
}


def all_candidates(n, k):
    return [(i, j) for i in range(n) for j in range(i, min(n, i + k))]


def random_case(rng: random.Random):
    n, k, n_labels = rng.randint(1, 6), rng.randint(1, 3), rng.randint(1, 2)
    cands = [c for c in all_candidates(n, k) if rng.random() < 0.85] or [(0, 0)]
    rng.shuffle(cands)  # the decoder must not rely on the candidates' order
    if rng.random() < 0.5:
        probs = [rng.choice(TIED_ROWS[n_labels]) for _ in cands]
    else:
        probs = []
        for _ in cands:
            row = [rng.random() ** 3 for _ in range(n_labels + 1)]
            probs.append([x / sum(row) for x in row])
    min_score = rng.choice([0.0, 0.3, 0.5, 0.6, 0.8])
    return cands, np.array(probs), min_score


def label_of(row):
    """(label column, score): the most probable label, the first on a tie."""
    best = max(range(1, len(row)), key=lambda y: (row[y], -y))
    return best, row[best]


def weight(row):
    y, p = label_of(row)
    return round(math.log(max(p, 1e-300) / max(row[0], 1e-300)) * 2 ** 32)


def consistent(a, b, overlap):
    disjoint = a[1] < b[0] or b[1] < a[0]
    if overlap == "flat":
        return disjoint
    inside = (a[0] <= b[0] and b[1] <= a[1]) or (b[0] <= a[0] and a[1] <= b[1])
    return a != b and (disjoint or inside)


def brute_force(cands, probs, overlap, min_score):
    """The kept candidates' indices, by trying every consistent subset of the eligible ones: the
    highest total weight, then, at the first candidate (by start, longest first) where two sets
    differ, the one holding it."""
    kept = [c for c in range(len(cands)) if label_of(probs[c])[1] >= min_score]
    if overlap == "any":
        return sorted(kept, key=lambda c: cands[c])
    eligible = sorted((c for c in kept if probs[c][label_of(probs[c])[0]] > probs[c][0]),
                      key=lambda c: (cands[c][0], -cands[c][1]))
    best_key, best = None, []

    def visit(at, chosen):
        nonlocal best_key, best
        if at == len(eligible):
            key = (sum(weight(probs[c]) for c in chosen), tuple(c in chosen for c in eligible))
            if best_key is None or key > best_key:
                best_key, best = key, list(chosen)
            return
        c = eligible[at]
        if all(consistent(cands[c], cands[d], overlap) for d in chosen):
            visit(at + 1, chosen + [c])
        visit(at + 1, chosen)

    visit(0, [])
    return sorted(best, key=lambda c: cands[c])


@pytest.mark.parametrize("overlap", ["any", "flat", "nested"])
def test_decodings_match_brute_force(overlap):
    rng = random.Random(f"spandecode-{overlap}")
    for case in range(400):
        cands, probs, min_score = random_case(rng)
        start, end = np.array([c[0] for c in cands]), np.array([c[1] for c in cands])
        got = chosen_candidates(start, end, probs, overlap, min_score).tolist()
        want = brute_force(cands, probs, overlap, min_score)
        assert got == want, (case, cands, probs.tolist(), min_score)


def test_decoded_spans_carry_label_names_scores_and_exclusive_ends():
    start, end = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2])
    probs = np.array([[.1, .9, 0], [.2, .7, .1], [.3, .1, .6], [.1, .1, .8], [.5, .5, 0]])
    labels = ["LOC", "ORG"]
    # nested: 9 * 2 * 8 (0-0, 1-1, 1-2) beats 3.5 * 9 * 2 (0-1 over 0-0 and 1-1); 2-2 ties none
    assert decode_candidates(start, end, probs, labels, "nested") == [
        (0, 1, "LOC", 0.9), (1, 2, "ORG", 0.6), (1, 3, "ORG", 0.8)]
    assert decode_candidates(start, end, probs, labels, "flat") == [(0, 1, "LOC", 0.9), (1, 3, "ORG", 0.8)]
    assert decode_candidates(start, end, probs, labels, "any") == [
        (0, 1, "LOC", 0.9), (0, 2, "LOC", 0.7), (1, 2, "ORG", 0.6), (1, 3, "ORG", 0.8), (2, 3, "LOC", 0.5)]
    assert decode_candidates(start, end, probs, labels, "nested", min_score=0.65) == [
        (0, 1, "LOC", 0.9), (1, 3, "ORG", 0.8)]
    assert decode_candidates(start[:0], end[:0], probs[:0], labels, "nested") == []


def test_min_score_is_inclusive_and_checked():
    start, end = np.array([0, 1, 2]), np.array([0, 1, 2])
    probs = np.array([[0.3, 0.7], [0.0, 1.0], [0.45, 0.55]])
    for overlap in ("any", "flat", "nested"):
        assert chosen_candidates(start, end, probs, overlap, 0.7).tolist() == [0, 1]
        assert chosen_candidates(start, end, probs, overlap, np.nextafter(0.7, 1)).tolist() == [1]
        assert chosen_candidates(start, end, probs, overlap, 1.0).tolist() == [1]  # p_none 0: chosen
        assert chosen_candidates(start, end, probs, overlap, 0.55).tolist() == [0, 1, 2]
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(TagtuneError, match="min_score must be a number from 0 to 1"):
            chosen_candidates(start, end, probs, "flat", bad)
    with pytest.raises(TagtuneError, match="overlap must be one of nested, flat, any"):
        chosen_candidates(start, end, probs, "crossing")


def test_a_span_no_likelier_than_none_is_kept_only_by_any():
    start, end = np.array([0, 1]), np.array([0, 1])
    probs = np.array([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0]])
    assert chosen_candidates(start, end, probs, "any", 0.4).tolist() == [0, 1]
    assert chosen_candidates(start, end, probs, "flat", 0.4).tolist() == []
    assert chosen_candidates(start, end, probs, "nested", 0.0).tolist() == []


def test_ties_go_to_the_earlier_then_the_longer_span():
    row = [0.2, 0.8]
    # two crossing spans of equal weight: the earlier start
    crossing = (np.array([1, 0]), np.array([2, 1]), np.array([row, row]))
    assert decode_candidates(*crossing, ["A"], "flat") == [(0, 2, "A", 0.8)]
    assert decode_candidates(*crossing, ["A"], "nested") == [(0, 2, "A", 0.8)]
    # one span of ratio 4 or two of ratio 2 inside it (equal totals): flat takes the longer
    pair = (np.array([0, 0, 1]), np.array([1, 0, 1]), np.array([[0.2, 0.8], [1 / 3, 2 / 3], [1 / 3, 2 / 3]]))
    assert decode_candidates(*pair, ["A"], "flat") == [(0, 2, "A", 0.8)]
    assert [s[:2] for s in decode_candidates(*pair, ["A"], "nested")] == [(0, 1), (0, 2), (1, 2)]
    # same start, equal weights: the longer
    same_start = (np.array([0, 0]), np.array([0, 1]), np.array([row, row]))
    assert [s[:2] for s in decode_candidates(*same_start, ["A"], "flat")] == [(0, 2)]
    # the first label in order on a tie between labels
    assert decode_candidates(np.array([0]), np.array([0]), np.array([[0.2, 0.4, 0.4]]), ["A", "B"],
                             min_score=0.4) == [(0, 1, "A", 0.4)]


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError, match="same start and end"):
        chosen_candidates(np.array([0, 0]), np.array([1, 1]), np.array([[0.1, 0.9], [0.2, 0.8]]), "flat")
    with pytest.raises(ValueError, match="not a unit range"):
        chosen_candidates(np.array([2]), np.array([1]), np.array([[0.1, 0.9]]), "flat")
    with pytest.raises(ValueError, match="3 columns but there are 1 labels"):
        decode_candidates(np.array([0]), np.array([0]), np.array([[0.1, 0.8, 0.1]]), ["A"])


def test_long_texts_decode_quickly_and_consistently():
    rng = np.random.default_rng(0)
    n, k = 3000, 8
    start = np.repeat(np.arange(n), k)
    end = start + np.tile(np.arange(k), n)
    inside = end < n
    start, end = start[inside], end[inside]
    probs = rng.dirichlet([3.0, 0.3, 0.3], size=len(start))
    flat = chosen_candidates(start, end, probs, "flat")
    nested = chosen_candidates(start, end, probs, "nested")
    assert len(flat) and (start[flat][1:] > end[flat][:-1]).all()
    s, e = start[nested], end[nested]
    cross = (s[:, None] < s[None]) & (s[None] <= e[:, None]) & (e[:, None] < e[None])
    assert not cross.any()

    def total(chosen):
        y = probs[chosen, 1:].max(axis=1)
        return float(np.log(y / probs[chosen, 0]).sum())

    assert total(nested) >= total(flat) - 1e-6  # every flat set is nested


def test_no_torch_needed():
    code = "import sys, tagtune.data.spandecode; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- windows --------------------------------------------------------------------------------------


def window_case(rng: random.Random):
    length, size = rng.randint(1, 14), rng.randint(1, 6)
    bounds = window_bounds(length, size, rng.randint(0, size - 1))
    k = rng.randint(1, 3)
    starts, ends, probs = [], [], []
    for a, b in bounds:
        cands = [c for c in all_candidates(b - a, k) if rng.random() < 0.9]
        rng.shuffle(cands)
        starts.append(np.array([i for i, _ in cands], dtype=np.int64))
        ends.append(np.array([j for _, j in cands], dtype=np.int64))
        probs.append(np.array([[rng.random() for _ in range(3)] for _ in cands]).reshape(-1, 3))
    return bounds, starts, ends, probs


def test_window_merge_matches_a_per_candidate_choice():
    rng = random.Random("spandecode-windows")
    for case in range(300):
        bounds, starts, ends, probs = window_case(rng)
        text_end = bounds[-1][1]
        seen = {}  # extent -> (margin, -window, probabilities)
        for w, ((a, b), s, e, p) in enumerate(zip(bounds, starts, ends, probs)):
            for i, j, row in zip(s.tolist(), ends[w].tolist(), p.tolist()):
                left = math.inf if a == 0 else i
                right = math.inf if b == text_end else (b - a - 1) - j
                key = (min(left, right), -w)
                extent = (i + a, j + a)
                if extent not in seen or key > seen[extent][0]:
                    seen[extent] = (key, row)
        start, end, merged = merge_window_candidates(bounds, starts, ends, probs)
        extents = sorted(seen)
        assert list(zip(start.tolist(), end.tolist())) == extents, case
        np.testing.assert_array_equal(merged, np.array([seen[x][1] for x in extents]).reshape(-1, 3))


def test_one_unit_candidates_merge_as_tokens_do():
    rng = np.random.default_rng(1)
    for length, size, stride in [(20, 8, 3), (20, 8, 4), (17, 6, 2), (9, 4, 1), (5, 8, 2)]:
        bounds = window_bounds(length, size, stride)
        outputs = [rng.random((b - a, 2)) for a, b in bounds]
        units = [np.arange(b - a) for a, b in bounds]
        start, end, merged = merge_window_candidates(bounds, units, units, outputs)
        assert start.tolist() == end.tolist() == list(range(length))
        np.testing.assert_array_equal(merged, merge_windows(bounds, outputs))
    # windows without candidates give none
    nothing = [np.zeros(0, dtype=np.int64)] * 2
    start, end, merged = merge_window_candidates([(0, 3), (2, 5)], nothing, nothing, [np.zeros((0, 3))] * 2)
    assert len(start) == len(end) == len(merged) == 0
    start, end, merged = merge_window_candidates(
        [(0, 3), (2, 5)], [nothing[0], np.array([1])], [nothing[0], np.array([2])], [np.zeros((0, 3)), np.eye(3)[:1]])
    assert (start.tolist(), end.tolist(), merged.tolist()) == ([3], [4], [[1.0, 0.0, 0.0]])


# -- uncertainty ----------------------------------------------------------------------------------


def test_uncertainty_is_the_mean_over_units_of_the_largest_mass_not_taken():
    start, end = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2])
    probs = np.array([[.1, .9, 0], [.2, .7, .1], [.3, .1, .6], [.1, .1, .8], [.5, .5, 0]])
    chosen = chosen_candidates(start, end, probs, "nested")  # 0-0, 1-1, 1-2
    # unit 0: 0-1 left out (0.8 on ORG/LOC), unit 1: the same, unit 2: 2-2 left out (0.5)
    assert span_uncertainty(start, end, probs, chosen, 3) == pytest.approx((0.8 + 0.8 + 0.5) / 3)
    # a fourth unit no candidate covers counts as sure
    assert span_uncertainty(start, end, probs, chosen, 4) == pytest.approx((0.8 + 0.8 + 0.5) / 4)
    assert span_uncertainty(start[:0], end[:0], probs[:0], [], 0) == 0.0
    sure = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [1.0, 0, 0]])
    assert span_uncertainty(start, end, sure, chosen_candidates(start, end, sure), 3) == 0.0


def test_uncertainty_matches_a_per_unit_loop():
    rng = random.Random("spandecode-uncertainty")
    for _ in range(100):
        cands, probs, min_score = random_case(rng)
        start, end = np.array([c[0] for c in cands]), np.array([c[1] for c in cands])
        n = max(j for _, j in cands) + 1 + rng.randint(0, 1)
        chosen = set(chosen_candidates(start, end, probs, "nested", min_score).tolist())
        per_unit = []
        for u in range(n):
            masses = [1 - probs[c][label_of(probs[c])[0] if c in chosen else 0]
                      for c, (i, j) in enumerate(cands) if i <= u <= j]
            per_unit.append(max(masses, default=0.0))
        assert span_uncertainty(start, end, probs, sorted(chosen), n) == pytest.approx(sum(per_unit) / n)
