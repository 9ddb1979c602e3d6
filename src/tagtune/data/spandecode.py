"""From a span head's candidate probabilities to spans (numpy only: no torch here).

The span head scores each candidate span (i, j) of a text, units i..j both included, with
probabilities over ``L + 1`` columns: column 0 "none", columns 1..L the entity labels.
``decode_candidates`` keeps the spans of one text under one of three overlap rules:

- ``"any"``: every candidate whose score reaches ``min_score``, overlapping or not.
- ``"flat"``: the set of spans that share no unit,
- ``"nested"``: the set in which any two spans are disjoint or one lies within the other (no
  crossing; one label per extent),

the last two maximising the sum of ``log(p_label / p_none)`` over the chosen spans: with
candidates scored independently, the most probable consistent reading, each chosen candidate
contributing its label's probability and every other one its "none".

A candidate's label is its most probable label column (the first, in label order, on a tie)
and its score that column's probability. Flat and nested consider only *eligible* candidates:
score at least ``min_score`` and ``p_label > p_none``. A span with ``p_label <= p_none`` (there
can be some when ``min_score < 0.5``) never raises the sum, so the best set never needs it; an
exact tie ``p_label == p_none`` is thus decided towards leaving the span out. ``"any"`` keeps
such spans when their score reaches ``min_score``.

Exact and deterministic. Weights are rounded to multiples of 2^-32 and summed as integers, so
equal totals are equal whatever the order of addition. Among sets with the same total, the one
preferred is the one that, at the first candidate where two sets differ, holds it, candidates
taken by start unit, then longest first: an earlier start wins, then a longer span. Flat is
weighted interval scheduling, O(n K) for n units and spans of at most K units; nested an
interval dynamic programme over widths, O(n K^2), vectorised over the units at each width;
both finish with one pass over the units from the end (``_best_blocks``).

Long texts are read in overlapping windows: ``merge_window_candidates`` gives each candidate
the probabilities of the window in which it lies farthest from an edge, as
``tagtune.data.align.merge_windows`` does for tokens. ``span_uncertainty`` measures how sure
the decoding was, for choosing texts to label.
"""

from __future__ import annotations

import numpy as np

from tagtune.data.decode import as_array, check_min_score
from tagtune.errors import TagtuneError

OVERLAPS = ("nested", "flat", "any")
SCALE = 2.0 ** 32  # weights are rounded to multiples of 1 / SCALE
NEG = -(2 ** 62)  # "not possible": below any sum of weights, and NEG + a sum never overflows


def check_overlap(value) -> str:
    """``value`` if it is one of ``OVERLAPS``, else a TagtuneError saying so."""
    if value not in OVERLAPS:
        raise TagtuneError(f"overlap must be one of {', '.join(OVERLAPS)}, got {value!r}")
    return value


def candidate_labels(probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(label, score, weight)`` of candidates ``probs: (C, L+1)``, each ``(C,)``.

    ``label`` is the most probable column 1..L (the first on a tie), ``score`` its probability,
    ``weight`` int64: ``log(score / p_none)`` times 2^32, rounded (probabilities below the
    smallest normal float64 taken as that, so the weight is finite).
    """
    probs = np.asarray(as_array(probs), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (candidates, 1 + labels) with at least one label, got {probs.shape}")
    label = np.argmax(probs[:, 1:], axis=1) + 1  # (C,): argmax takes the first maximum
    score = probs[np.arange(len(probs)), label]
    tiny = np.finfo(np.float64).tiny
    ratio = np.log(np.maximum(score, tiny)) - np.log(np.maximum(probs[:, 0], tiny))
    return label, score, np.rint(ratio * SCALE).astype(np.int64)


def _checked(start, end, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    start = np.asarray(as_array(start), dtype=np.int64).reshape(-1)
    end = np.asarray(as_array(end), dtype=np.int64).reshape(-1)
    probs = np.asarray(as_array(probs), dtype=np.float64)
    if not len(start) == len(end) == len(probs):
        raise ValueError(f"{len(start)} start units, {len(end)} end units and {len(probs)} rows of probabilities")
    if ((start < 0) | (end < start)).any():
        k = int(np.flatnonzero((start < 0) | (end < start))[0])
        raise ValueError(f"candidate {k} ({start[k]}, {end[k]}) is not a unit range i <= j with i >= 0")
    return start, end, probs


def chosen_candidates(start_unit, end_unit, probs, overlap: str = "nested", min_score: float = 0.5) -> np.ndarray:
    """Indices of the candidates kept for one text, ordered by (start, end).

    ``start_unit: (C,)`` and ``end_unit: (C,)`` are the candidates' units (end included),
    ``probs: (C, L+1)`` their probabilities, column 0 "none"; ``overlap`` and ``min_score`` as
    the module says. Two candidates of the same extent are an error.
    """
    start, end, probs = _checked(start_unit, end_unit, probs)
    check_overlap(overlap)
    min_score = check_min_score(min_score)
    if len(start) == 0:
        return np.zeros(0, dtype=np.int64)
    _, score, weight = candidate_labels(probs)
    kept = score >= min_score
    if overlap == "any":
        chosen = np.flatnonzero(kept)
    else:
        chosen = _choose(start, end, weight, kept & (weight > 0), overlap == "nested")
    return chosen[np.lexsort((end[chosen], start[chosen]))]


def decode_candidates(start_unit, end_unit, probs, labels: list[str], overlap: str = "nested",
                      min_score: float = 0.5) -> list[tuple[int, int, str, float]]:
    """The spans of one text, ``(start_unit, end_unit_exclusive, label, score)`` sorted by
    (start, end): ``chosen_candidates`` with the names ``labels`` of columns 1..L."""
    probs = np.asarray(as_array(probs), dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] != len(labels) + 1:
        raise ValueError(f"probs have {probs.shape[1]} columns but there are {len(labels)} labels and none")
    chosen = chosen_candidates(start_unit, end_unit, probs, overlap, min_score)
    if len(chosen) == 0:
        return []
    label, score, _ = candidate_labels(probs[chosen])
    start = np.asarray(as_array(start_unit), dtype=np.int64).reshape(-1)[chosen]
    end = np.asarray(as_array(end_unit), dtype=np.int64).reshape(-1)[chosen]
    return [(i, j + 1, labels[y - 1], s) for i, j, y, s in zip(start.tolist(), end.tolist(), label.tolist(), score.tolist())]


def _choose(start: np.ndarray, end: np.ndarray, weight: np.ndarray, eligible: np.ndarray, nested: bool) -> np.ndarray:
    """Indices of the best flat or nested set of the ``eligible`` candidates (weights > 0)."""
    n = int(end.max()) + 1
    width = int((end - start).max()) + 1  # K: the widest candidate, in units
    at = np.full((width + 1, n + width), -1, dtype=np.int64)  # at[d, i]: candidate over units i..i+d-1
    at[end - start + 1, start] = np.arange(len(start))
    if (np.bincount(at[end - start + 1, start] + 1, minlength=len(start) + 1)[1:] != 1).any():
        raise ValueError("two candidates have the same start and end units")
    w = np.where(at >= 0, weight[np.maximum(at, 0)], 0)  # (K+1, n+K)
    ok = (at >= 0) & eligible[np.maximum(at, 0)]
    if not nested:
        blocks = np.where(ok, w, NEG)  # a top-level block is one span
        return _unfold_flat(_best_blocks(blocks, n), at)
    split, blocks = _nested_tables(w, ok)
    return _unfold_nested(_best_blocks(blocks, n), at, ok, split)


def _nested_tables(w: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best nested sets within each interval [i, i+d), d <= K, vectorised over i.

    ``inside[d, i]``: the best total of the spans within [i, i+d) other than that span itself;
    ``best[d, i] = inside + its weight where it may be chosen``; ``held[d, i]`` the best total
    holding the span [i, i+d) (NEG where it may not be chosen). The spans within [i, i+d) other
    than itself either start after i (``best[d-1, i+1]``, split 0) or have a longest span
    [i, i+c), c < d, with everything else within it or within [i+c, i+d) (``held[c, i] +
    best[d-c, i+c]``, split c); the splits are tried longest first, then 0, and the first best
    kept (the module's tie rule). Returns ``(split, held)``, both ``(K+1, n+K)`` like ``w`` and
    ``ok`` (a span's weight, whether it may be chosen); past the text's end, empty intervals.
    """
    k_max, length = w.shape[0] - 1, w.shape[1]
    inside = np.zeros((k_max + 1, length), dtype=np.int64)
    best = np.zeros_like(inside)
    held = np.full_like(inside, NEG)
    split = np.zeros_like(inside)

    def shifted(row: np.ndarray, by: int) -> np.ndarray:  # row[i + by] for every i, 0 past the end
        return np.concatenate([row[by:], np.zeros(by, dtype=row.dtype)])

    for d in range(1, k_max + 1):
        if d > 1:
            options = [held[c] + shifted(best[d - c], c) for c in range(d - 1, 0, -1)]
            options.append(shifted(best[d - 1], 1))
            options = np.stack(options)  # (d, n+K): splits d-1, ..., 1, then 0
            pick = np.argmax(options, axis=0)  # the first best
            inside[d] = options[pick, np.arange(length)]
            split[d] = np.where(pick == d - 1, 0, d - 1 - pick)
        held[d] = np.where(ok[d], inside[d] + w[d], NEG)
        best[d] = np.where(ok[d], held[d], inside[d])  # a chosen span has weight > 0
    return split, held


def _best_blocks(blocks: np.ndarray, n: int) -> list[int]:
    """The best cover of units 0..n-1 by disjoint blocks: ``blocks[d, i]`` (``(K+1, n+K)``)
    the value of a block over units i..i+d-1 (NEG: none), a unit outside every block adding 0.

    One pass from the last unit: ``total[i]`` the best over units i..n-1, from a block at i
    (longest first) or none; on a tie the first option tried wins. Returns ``step[i]``: the
    width of the block taken at i, 0 for none.
    """
    k_max = blocks.shape[0] - 1
    rows = blocks[1:, :n].T.tolist()  # (n, K): rows[i][d-1], Python ints
    total = [0] * (n + k_max + 1)
    step = [0] * n
    for i in range(n - 1, -1, -1):
        best, taken = NEG, 0
        row = rows[i]
        for d in range(min(k_max, n - i), 0, -1):
            if row[d - 1] > NEG and row[d - 1] + total[i + d] > best:
                best, taken = row[d - 1] + total[i + d], d
        if total[i + 1] > best:
            best, taken = total[i + 1], 0
        total[i], step[i] = best, taken
    return step


def _unfold_flat(step: list[int], at: np.ndarray) -> np.ndarray:
    chosen, i = [], 0
    while i < len(step):
        if step[i]:
            chosen.append(int(at[step[i], i]))
        i += step[i] or 1
    return np.array(chosen, dtype=np.int64)


def _unfold_nested(step: list[int], at: np.ndarray, ok: np.ndarray, split: np.ndarray) -> np.ndarray:
    chosen, todo, i = [], [], 0
    while i < len(step):
        if step[i]:
            todo.append((step[i], i, True))
        i += step[i] or 1
    while todo:  # (d, i, held): the best set within [i, i+d), holding that span if held
        d, i, held = todo.pop()
        if held or ok[d, i]:
            chosen.append(int(at[d, i]))
        if d == 1:
            continue
        c = int(split[d, i])
        if c == 0:
            todo.append((d - 1, i + 1, False))
        else:
            todo.append((c, i, True))
            todo.append((d - c, i + c, False))
    return np.array(chosen, dtype=np.int64)


# -- windows and uncertainty ----------------------------------------------------------------------


def merge_window_candidates(bounds: list[tuple[int, int]], starts, ends, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One text's candidates from its overlapping windows: ``(start (C,), end (C,), probs (C, L+1))``
    in text units, ordered by (start, end), each extent once.

    Window k holds the text's units ``bounds[k][0]..bounds[k][1]-1``, and ``starts[k]``,
    ``ends[k]`` (window units, end included) and ``probs[k]`` are its candidates. A candidate
    seen in several windows takes its probabilities from the one in which it lies farthest from
    an edge: its margin there is the smaller of its distance to the window's first unit and to
    its last, an edge at the text's own start or end not counting (nothing is missing beyond
    it); the earlier window wins a tie. For one-unit candidates this is the choice
    ``tagtune.data.align.merge_windows`` makes for tokens.
    """
    if not (len(bounds) == len(starts) == len(ends) == len(probs)) or not bounds:
        raise ValueError(f"{len(bounds)} windows but {len(starts)}, {len(ends)} and {len(probs)} lists of candidates")
    far = np.iinfo(np.int64).max
    text_end = max(b for _, b in bounds)
    pieces = []
    for k, ((a, b), s, e, p) in enumerate(zip(bounds, starts, ends, probs)):
        s, e, p = _checked(s, e, p)
        if len(e) and e.max() >= b - a:
            raise ValueError(f"window {k} holds {b - a} units but has a candidate ending at unit {e.max()}")
        left = np.full(len(s), far) if a == 0 else s
        right = np.full(len(e), far) if b == text_end else (b - a - 1) - e
        pieces.append((s + a, e + a, np.minimum(left, right), np.full(len(s), k), p))
    start, end, margin, window = (np.concatenate([piece[x] for piece in pieces]) for x in range(4))
    rows = np.concatenate([piece[4] for piece in pieces if len(piece[4])] or [pieces[0][4]])  # (all, L+1)
    order = np.lexsort((window, -margin, end, start))  # per extent, the widest margin first
    start, end = start[order], end[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (start[1:] != start[:-1]) | (end[1:] != end[:-1])
    return start[first], end[first], rows[order[first]]


def span_uncertainty(start_unit, end_unit, probs, chosen, n_units: int) -> float:
    """How unsure the decoding ``chosen`` (``chosen_candidates``' indices) of one text is, 0 to 1.

    Each candidate is a decision: its label where it was chosen, "none" where not; the mass on
    the decisions not taken is 1 - the probability of the one taken. A unit's uncertainty is the
    largest such mass among the candidates that cover it, and the text's the mean over its
    ``n_units`` units (0 for none). Per unit rather than per candidate, so a text's many long
    candidates, nearly all clearly "none", do not hide one doubtful span.
    """
    start, end, probs = _checked(start_unit, end_unit, probs)
    if n_units <= 0 or len(start) == 0:
        return 0.0
    if end.max() >= n_units:
        raise ValueError(f"a candidate ends at unit {end.max()} of a text of {n_units} units")
    label, _, _ = candidate_labels(probs)
    taken = np.zeros(len(start), dtype=np.int64)
    chosen = np.asarray(chosen, dtype=np.int64)
    taken[chosen] = label[chosen]
    miss = 1.0 - probs[np.arange(len(start)), taken]  # (C,)
    width = end - start + 1
    offset = np.arange(width.sum()) - np.repeat(np.cumsum(width) - width, width)
    per_unit = np.zeros(n_units)
    np.maximum.at(per_unit, np.repeat(start, width) + offset, np.repeat(miss, width))
    return float(per_unit.mean())
