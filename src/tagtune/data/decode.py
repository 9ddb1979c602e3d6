"""From a tagger's logits to tags, character spans and span probabilities (numpy only: no torch here).

``viterbi`` finds, for each sequence of a batch, the tag sequence with the highest total
log-probability among those the scheme allows (tagtune.data.schemes.transition_mask), so a BIO
tagger never outputs ``O I-PER``. ``argmax_decode`` takes each position's best tag on its own.
``spans_from_tags`` turns one sequence's tags into ``Span``s over the characters each position
covers; ``decode`` runs the whole chain up to tag ids and their probabilities, ``decode_spans``
up to spans scored with their probabilities.

A span's score is the probability that exactly its positions form one entity of its label,
under the distribution the decoding maximises. With constrained decoding that is Viterbi's: a
tag path's score is the sum of its positions' log-softmax scores, paths the scheme forbids have
probability 0, and p(path) = exp(score) / (the sum of exp(score) over allowed paths). With argmax
decoding every path is allowed, and p(path) is the product of the positions' softmax
probabilities (each position on its own, which argmax maximises). ``forward_backward`` sums over
all paths of that lattice, one step per position; ``span_probabilities`` then adds up the paths in
which positions i..j-1 are read as one entity of the span's type and the positions on either side
are not part of it, reading tags as ``entities_from_tags`` does (``chunk_relations``).

A tagger trained with a linear-chain CRF (``tagtune train --crf``) adds learned scores to the
lattice: ``start[y]`` for a path beginning in y, ``trans[a, b]`` for b right after a, ``end[y]``
for a path ending in y (``Transitions``). ``start``/``trans``/``end`` arguments are therefore
either boolean (allowed or not: each allowed step scores 0, a forbidden one -inf) or float
log-scores (-inf where the scheme forbids the step); a path then scores the sum of its
positions' log-softmax scores and of its steps' scores, and Viterbi, the marginals and the span
probabilities are those of the CRF. Log-softmax or raw logits as emissions give the same CRF:
the two differ at each position by one constant shared by all labels, so every path's score
shifts by the same amount, which cancels in p(path) and in Viterbi's argmax.

Temperature (``temperature`` T > 0, tagtune.json's ``temperature``, fitted on dev by
tagtune.data.metrics.fit_temperature) scales the scores only: the spans' probabilities come from the
lattice of ``logits / T``, and a CRF's ``start``/``trans``/``end`` are divided by T alike, so
that p(path) is proportional to exp(score(path) / T) for the same score as at T = 1. The tags are
always decoded from the logits as they are (at T = 1), and dividing every path's score by one
T > 0 keeps the best path the best (dividing the emissions alone would not, with a CRF), so the
spans never change with T, only their scores. Softmax probabilities a span head gives are
tempered the same way (``temper_probs``: softmax(log(p) / T) = softmax(logits / T)).

Arrays may be numpy arrays or anything ``as_array`` turns into one (a CPU or GPU torch tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tagtune.data.schemes import OUTSIDE, chunk_relations, entities_from_tags, parse_tag, transition_mask
from tagtune.errors import TagtuneError
from tagtune.spans import Span


def as_array(x) -> np.ndarray:
    """``x`` as a numpy array; a torch tensor (on any device, any float type) is copied to the CPU."""
    if hasattr(x, "detach"):  # a torch tensor, recognised without importing torch
        x = x.detach()
        if x.is_floating_point():
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def log_softmax(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Log-softmax over the last axis, as ``dtype`` (float32 unless told)."""
    x = np.asarray(x, dtype=dtype)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, as float32."""
    return np.exp(log_softmax(x))


class Transitions(NamedTuple):
    """A CRF's learned log-scores over ``L`` labels, float64, -inf where the scheme forbids the
    step: ``start: (L,)`` a path begins in y, ``trans: (L, L)`` label b right after label a
    (``trans[a, b]``), ``end: (L,)`` a path ends in y."""

    start: np.ndarray
    trans: np.ndarray
    end: np.ndarray

    def masked(self, start, trans, end) -> Transitions:
        """These scores where the boolean ``start``/``trans``/``end`` allow the step, -inf elsewhere."""
        return Transitions(*(np.where(as_array(allowed).astype(bool), np.asarray(score, dtype=np.float64), -np.inf)
                             for allowed, score in zip((start, trans, end), self)))

    def scaled(self, temperature: float) -> Transitions:
        """These scores divided by ``temperature`` (-inf stays -inf)."""
        return Transitions(*(np.asarray(x, dtype=np.float64) / temperature for x in self))


def check_temperature(value, name: str = "temperature") -> float:
    """``value`` as a float if it is a finite number > 0, else a TagtuneError saying so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
        raise TagtuneError(f"{name} must be a number above 0, got {value!r} (1 keeps the model's own scores)")
    return float(value)


def temper_probs(probs, temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities ``probs: (..., K)`` as they would be with their logits divided by
    ``temperature``: softmax(log(probs) / T), float64; at T = 1, ``probs`` as they are. A
    probability that underflowed to 0 stays 0."""
    if temperature == 1.0:
        return as_array(probs)
    probs = np.asarray(as_array(probs), dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.log(probs) / temperature
    top = logp.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    p = np.exp(logp - top)
    total = p.sum(axis=-1, keepdims=True)
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0)


def log_scores(x, dtype=np.float64) -> np.ndarray:
    """Step scores as ``dtype`` log-values: a boolean array becomes 0 where allowed and -inf
    where not; a float array (a CRF's scores, -inf where forbidden) is taken as it is."""
    x = as_array(x)
    if x.dtype == bool:
        return np.where(x, 0.0, -np.inf).astype(dtype)
    return x.astype(dtype)


def _check_batch(logits, mask) -> tuple[np.ndarray, np.ndarray]:
    """``logits: (B, N, L)`` and ``mask: (B, N)`` as numpy arrays, checked: real positions first."""
    logits = as_array(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (batch, positions, labels), got shape {tuple(logits.shape)}")
    mask = as_array(mask).astype(bool)
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)}")
    if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must mark each row's real positions first, then padding")
    return logits, mask


def viterbi(logits, mask, start, trans, end) -> np.ndarray:
    """Best allowed label ids ``(B, N)`` int64 for ``logits: (B, N, L)``.

    A path's score is the sum of its positions' log-softmax scores and of its steps' scores:
    ``start: (L,)``, ``trans: (L, L)`` (``trans[i, j]``: j right after i) and ``end: (L,)`` are
    boolean (an allowed step scores 0, a disallowed one -inf) or a CRF's float log-scores
    (-inf where disallowed, see ``log_scores``). ``mask: (B, N)`` marks real positions, which come first in
    each row; padding positions get 0 and a row without real positions is all 0.
    Vectorised over the batch and the labels; one step per position.
    """
    logits, mask = _check_batch(logits, mask)
    batch, length, n_labels = logits.shape
    if length == 0:
        return np.zeros((batch, 0), dtype=np.int64)
    emissions = log_softmax(logits)  # (B, N, L)
    start_b, trans_b, end_b = (log_scores(x, np.float32) for x in (start, trans, end))

    score = start_b + emissions[:, 0]  # (B, L): best score of a path ending in each label
    stay = np.broadcast_to(np.arange(n_labels), (batch, n_labels))
    backpointers = []
    for t in range(1, length):
        candidates = score[:, :, None] + trans_b  # (B, L previous, L next)
        prev = candidates.argmax(axis=1)  # (B, L)
        best = np.take_along_axis(candidates, prev[:, None, :], axis=1)[:, 0]  # (B, L)
        real = mask[:, t, None]  # (B, 1)
        # Past a row's end the score is carried unchanged and the backpointer is the identity,
        # so the final argmax below is taken at each row's own last real position.
        score = np.where(real, best + emissions[:, t], score)
        backpointers.append(np.where(real, prev, stay))
    label = (score + end_b).argmax(axis=1)  # (B,)
    path = [label]
    rows = np.arange(batch)
    for prev in reversed(backpointers):
        label = prev[rows, label]
        path.append(label)
    path.reverse()
    ids = np.stack(path, axis=1).astype(np.int64)  # (B, N)
    ids[~mask] = 0
    return ids


def argmax_decode(logits) -> np.ndarray:
    """Each position's highest-scoring label id (``logits: (..., L)`` -> ``(...)``, int64)."""
    return as_array(logits).argmax(axis=-1).astype(np.int64)


# -- forward-backward -----------------------------------------------------------------------------


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum(exp(x)))`` over ``axis``; -inf where every term is -inf (no warning, no NaN)."""
    top = x.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", under="ignore"):
        return np.log(np.exp(x - top).sum(axis=axis)) + np.squeeze(top, axis=axis)


def _log_matmul(score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``out[s, b] = log sum_a exp(score[s, a] + weights[a, b])``.

    ``score: (S, L)`` and ``weights: (L, L)`` float64 log-values (-inf: no such step). A matrix
    product of ``exp(score - row max)`` and ``exp(weights - column max)``, exact to rounding.
    Where every term of a sum underflows (log-values more than ~700 apart), that row is summed
    again term by term in log space, so that no allowed path is lost.
    """
    top = score.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # (S, 1)
    column = weights.max(axis=0, keepdims=True)
    column = np.where(np.isfinite(column), column, 0.0)  # (1, L)
    allowed = np.isfinite(weights).astype(np.float64)
    with np.errstate(divide="ignore", under="ignore"):
        out = np.log(np.exp(score - top) @ np.exp(weights - column)) + top + column
        lost = np.isneginf(out) & ((np.isfinite(score) @ allowed) > 0)  # reachable, yet summed to 0
        if lost.any():
            rows = np.flatnonzero(lost.any(axis=1))
            out[rows] = _logsumexp(score[rows, :, None] + weights, axis=1)  # (R, L, L) -> (R, L)
    return out


@dataclass
class Lattice:
    """The forward-backward sums of a batch (``forward_backward``), in log space, float64.

    ``alpha[b, t, y]``: log of the summed probability mass (unnormalised) of the allowed paths
    over positions 0..t that end in y at t, position t's score included; carried unchanged over
    padding. ``beta[b, t, y]``: the same for the allowed continuations t+1..n-1 after y at t,
    the end constraint included. ``log_z[b]``: log of the mass of all allowed paths of row b
    (-inf when the scheme allows none). ``emissions``: the log-softmax scores ``(B, N, L)``;
    ``start``, ``trans``, ``end``: the step log-scores (``log_scores``: 0 or -inf without a CRF).
    """

    emissions: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    log_z: np.ndarray
    mask: np.ndarray
    start: np.ndarray
    trans: np.ndarray
    end: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Real positions per row, ``(B,)``."""
        return self.mask.sum(axis=1)

    def marginals(self) -> np.ndarray:
        """``p(tag at t = y)``, ``(B, N, L)`` float64: each real position's row sums to 1; 0 on
        padding and in rows the scheme allows no path for."""
        with np.errstate(invalid="ignore", under="ignore"):
            p = np.exp(self.alpha + self.beta - self.log_z[:, None, None])
        ok = self.mask & np.isfinite(self.log_z)[:, None]
        return np.where(ok[..., None], p, 0.0)


def forward_backward(logits, mask, start, trans, end) -> Lattice:
    """Sums over every allowed tag path of ``logits: (B, N, L)``, by the forward-backward algorithm.

    The distribution is Viterbi's (same arguments as ``viterbi``): a path scores the sum of its
    positions' log-softmax scores and of its steps' scores (boolean steps: 0 if allowed, -inf if
    not; a CRF's: its log-scores), and p(path) = exp(score) / sum over allowed paths of
    exp(score). Vectorised over the batch and the labels, one step per position each way.
    """
    logits, mask = _check_batch(logits, mask)
    batch, length, n_labels = logits.shape
    start, trans, end = (log_scores(x) for x in (start, trans, end))
    emissions = log_softmax(logits, np.float64)  # (B, N, L)
    start_b, end_b = start, end
    alpha = np.empty((batch, length, n_labels))
    beta = np.empty((batch, length, n_labels))
    if length == 0:
        return Lattice(emissions, alpha, beta, np.zeros(batch), mask, start, trans, end)
    a = start_b + emissions[:, 0]  # (B, L)
    alpha[:, 0] = a
    for t in range(1, length):
        a = np.where(mask[:, t, None], _log_matmul(a, trans) + emissions[:, t], a)
        alpha[:, t] = a
    log_z = _logsumexp(a + end_b, axis=1)  # (B,): a is each row's last real position's
    b = np.broadcast_to(end_b, (batch, n_labels))
    beta[:, length - 1] = b
    for t in range(length - 2, -1, -1):
        # after a row's last real position, beta is the end constraint
        b = np.where(mask[:, t + 1, None], _log_matmul(emissions[:, t + 1] + b, trans.T), end_b)
        beta[:, t] = b
    log_z = np.where(mask[:, 0], log_z, 0.0)  # a row without positions has one (empty) path
    return Lattice(emissions, alpha, beta, log_z, mask, start, trans, end)


def span_probabilities(lattice: Lattice, labels: list[str], spans) -> np.ndarray:
    """For each ``(row, start, end, type)`` of ``spans`` (positions start..end-1 of a row of the
    lattice), the probability that exactly those positions form one entity of ``type``: float64
    ``(S,)``, each in [0, 1].

    Tags are read as ``entities_from_tags`` reads them (``chunk_relations``): the tag at start
    begins an entity of the type given the tag before it (none at a row's start), each tag up to
    end-1 continues it, and the tag at end (if the row goes on) does not. So under IO, where
    adjacent entities of one type are one, a run of I-X with I-X on either side is no entity of
    its own. Vectorised over the spans, one step per position of the longest.
    """
    spans = list(spans)
    if not spans:
        return np.zeros(0)
    rows, starts, ends = (np.array([s[k] for s in spans], dtype=np.int64) for k in range(3))
    lengths = lattice.lengths[rows]
    bad = (starts < 0) | (ends <= starts) | (ends > lengths)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"span {spans[k]!r} is not a non-empty range within its row's {lengths[k]} positions")
    parsed = [parse_tag(tag) for tag in labels]
    typed = np.array([[p != OUTSIDE and t == s[3] for p, t in parsed] for s in spans])  # (S, L)
    begins, continues = chunk_relations(labels)
    trans = lattice.trans  # (L, L) log-scores
    opening = np.where(begins, trans, -np.inf)  # a -> b: b begins an entity after a
    going_on = np.where(continues, trans, -np.inf)  # b extends a's entity
    closing = np.where(continues, -np.inf, trans).T  # [b, a]: b after a is not part of a's entity
    start_b, end_b = lattice.start, lattice.end
    em, alpha, beta = lattice.emissions, lattice.alpha, lattice.beta
    last = em.shape[1] - 1

    # v[s, y]: log mass of the allowed paths over positions 0..start+k that read start..start+k as
    # one entity of the type, ending in y
    before = alpha[rows, np.maximum(starts - 1, 0)]  # (S, L)
    v = np.where((starts == 0)[:, None], start_b, _log_matmul(before, opening)) + em[rows, starts]
    v = np.where(typed, v, -np.inf)
    for k in range(1, int((ends - starts).max())):
        step = _log_matmul(v, going_on) + em[rows, np.minimum(starts + k, last)]
        v = np.where(((ends - starts) > k)[:, None] & typed, step, np.where(typed, v, -np.inf))
    after = np.minimum(ends, last)
    tail = _log_matmul(em[rows, after] + beta[rows, after], closing)  # (S, L): the rest of the path
    tail = np.where((ends == lengths)[:, None], end_b, tail)
    log_z = lattice.log_z[rows]
    with np.errstate(invalid="ignore", under="ignore"):
        p = np.exp(_logsumexp(v + tail, axis=1) - log_z)
    return np.clip(np.where(np.isfinite(log_z), p, 0.0), 0.0, 1.0)


# -- tags and spans -------------------------------------------------------------------------------


def spans_from_tags(tags: list[str], ranges: list[tuple[int, int]], scheme: str = "BIO", *,
                    scores=None) -> list[Span]:
    """Spans for one sequence's ``tags``, position i covering characters ``ranges[i]``.

    Entities are read as conlleval does (``entities_from_tags``, default mode), so tags that
    break the scheme's rules, as argmax decoding can produce, still give spans. An entity over
    positions i..j becomes ``Span(ranges[i][0], ranges[j][1], type, score)``, the score being
    the entity's entry of ``scores`` (one per entity, in order, as ``span_probabilities`` gives
    them), or None without scores.
    """
    if len(ranges) != len(tags):
        raise ValueError(f"{len(tags)} tags but {len(ranges)} character ranges")
    entities = entities_from_tags(tags, scheme)
    if scores is not None and len(scores) != len(entities):
        raise ValueError(f"{len(entities)} entities but {len(scores)} scores")
    return [Span(ranges[i][0], ranges[j - 1][1], label, None if scores is None else float(scores[k]))
            for k, (i, j, label) in enumerate(entities)]


def _batched(logits, labels: list[str], mask) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(logits (B, N, L), mask (B, N), whether the input was one sequence)``, checked."""
    logits = as_array(logits)
    if mask is not None:
        mask = as_array(mask).astype(bool)
    single = logits.ndim == 2
    if single:
        logits = logits[None]
        if mask is not None:
            mask = mask[None]
    if logits.ndim != 3:
        raise ValueError(f"logits must be (positions, labels) or (batch, positions, labels), got {tuple(logits.shape)}")
    if logits.shape[-1] != len(labels):
        raise ValueError(f"logits have {logits.shape[-1]} outputs but there are {len(labels)} labels")
    if mask is None:
        mask = np.ones(logits.shape[:2], dtype=bool)
    return logits, mask, single


def _constraints(labels: list[str], scheme: str, constrained: bool, transitions: Transitions | None = None):
    """(start, trans, end) of the lattice decoded: the scheme's (boolean), a CRF's ``transitions``
    restricted to what the scheme allows (float log-scores), or everything allowed (argmax)."""
    if constrained:
        allowed = transition_mask(labels, scheme)
        if transitions is None:
            return allowed
        n = len(labels)
        shapes = tuple(np.shape(x) for x in transitions)
        if shapes != ((n,), (n, n), (n,)):
            raise ValueError(f"CRF scores of shapes {shapes} do not fit {n} labels")
        return transitions.masked(*allowed)
    n = len(labels)
    return np.ones(n, dtype=bool), np.ones((n, n), dtype=bool), np.ones(n, dtype=bool)


def decode(logits, labels: list[str], scheme: str = "BIO", constrained: bool = True, mask=None,
           transitions: Transitions | None = None, temperature: float = 1.0):
    """Tag ids and the probabilities of the chosen tags, from ``logits``.

    ``logits: (N, L)`` gives ``(ids, probs)``, two lists of N; ``(B, N, L)`` gives two lists of
    B lists, each as long as its row's real positions (``mask: (B, N)``, real positions first;
    all positions when None). ``labels`` names the L outputs; with ``constrained`` the best
    sequence the scheme allows is taken (``viterbi``), scored with a CRF's ``transitions`` when
    given, else each position's argmax (which a CRF does not change). ``probs`` are each chosen
    tag's softmax probability at its position, of ``logits / temperature`` (the ids do not depend
    on it); a span's probability is ``decode_spans``'s.
    """
    logits, mask, single = _batched(logits, labels, mask)
    if constrained:
        ids = viterbi(logits, mask, *_constraints(labels, scheme, True, transitions))
    else:
        ids = argmax_decode(logits)
    probs = np.take_along_axis(softmax(logits / temperature), ids[..., None], axis=-1)[..., 0]  # (B, N)
    lengths = mask.sum(axis=1).tolist()
    ids, probs = ids.tolist(), probs.tolist()
    ids = [row[:n] for row, n in zip(ids, lengths)]
    probs = [row[:n] for row, n in zip(probs, lengths)]
    return (ids[0], probs[0]) if single else (ids, probs)


def decode_spans(logits, labels: list[str], ranges, scheme: str = "BIO", constrained: bool = True,
                 mask=None, transitions: Transitions | None = None,
                 temperature: float = 1.0) -> list[Span] | list[list[Span]]:
    """Spans with their probabilities as scores, from ``logits``.

    ``logits: (N, L)`` with ``ranges``, the N character ranges of its positions, gives a list of
    Spans; ``(B, N, L)`` with B lists of ranges (each as long as its row's real positions,
    ``mask`` as in ``decode``) gives B lists. Tags are decoded as ``decode`` does, entities read
    from them as ``spans_from_tags`` does, and each span's score is its ``span_probabilities``
    under the lattice decoded: the scheme's with ``constrained`` (with a CRF's ``transitions``
    added to it when given: the CRF's marginals), else the one where every tag path is allowed
    and each position is on its own (a CRF's ``transitions`` are then not used). With a
    ``temperature`` T, the scores are those of the lattice of ``logits / T`` (and a CRF's scores
    / T); the spans are the same at every T.
    """
    logits, mask, single, constraints, ids = _decoded(logits, labels, scheme, constrained, mask, transitions,
                                                      temperature)
    out = _spans(logits, labels, [ranges] if single else ranges, scheme, mask, constraints, ids)
    return out[0] if single else out


def _decoded(logits, labels, scheme, constrained, mask, transitions, temperature: float = 1.0):
    """``(logits, mask, single, constraints, ids)``: the batch as ``_batched`` gives it and the
    lattice's constraints, both divided by ``temperature`` for the scores, and the tag ids
    ``decode`` takes (Viterbi under the constraints, or each position's argmax) from the logits
    as they are, so that they do not depend on the temperature."""
    logits, mask, single = _batched(logits, labels, mask)
    constraints = _constraints(labels, scheme, constrained, transitions)
    ids = viterbi(logits, mask, *constraints) if constrained else argmax_decode(logits)  # (B, N)
    if temperature != 1.0:
        logits = logits / np.float32(temperature)
        if isinstance(constraints, Transitions):  # a CRF's scores; the scheme's 0/-inf stay as they are
            constraints = constraints.scaled(temperature)
    return logits, mask, single, constraints, ids


def _spans(logits, labels, ranges, scheme, mask, constraints, ids, lattice: Lattice | None = None):
    """decode_spans' spans of a batch decoded as ``ids``, scored under ``lattice`` (of all rows),
    or under one made here for the rows that have spans."""
    if len(ranges) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} sequences but {len(ranges)} lists of character ranges")
    lengths = mask.sum(axis=1).tolist()
    tags = [[labels[i] for i in row[:n]] for row, n in zip(ids.tolist(), lengths)]
    entities = [entities_from_tags(row, scheme) for row in tags]
    rows = [b for b, found in enumerate(entities) if found]  # the lattice is needed for these only
    scores: list = [[] for _ in tags]
    if rows:
        if lattice is None:
            lattice = forward_backward(logits[rows], mask[rows], *constraints)
            asked = [(k, i, j, kind) for k, b in enumerate(rows) for i, j, kind in entities[b]]
        else:
            asked = [(b, i, j, kind) for b in rows for i, j, kind in entities[b]]
        p = span_probabilities(lattice, labels, asked).tolist()
        at = 0
        for b in rows:
            scores[b] = p[at:at + len(entities[b])]
            at += len(entities[b])
    out = []
    for row, r, found, s in zip(tags, ranges, entities, scores):
        if len(r) != len(row):
            raise ValueError(f"{len(row)} tags but {len(r)} character ranges")
        out.append([Span(r[i][0], r[j - 1][1], kind, p) for (i, j, kind), p in zip(found, s)])
    return out


def uncertainty(logits, labels: list[str], scheme: str = "BIO", constrained: bool = True, mask=None,
                transitions: Transitions | None = None, temperature: float = 1.0) -> np.ndarray:
    """Per row of ``logits: (B, N, L)`` (``mask`` as in ``decode``): the expected share of its
    positions whose decoded tag is wrong, the mean over its real positions of 1 - p(the tag
    ``decode`` takes there), p being the position's marginal under the lattice ``decode_spans``
    scores spans with (at ``temperature``); 0 for a row without positions. ``(B,)`` float64."""
    logits, mask, single, constraints, ids = _decoded(logits, labels, scheme, constrained, mask, transitions,
                                                      temperature)
    out = _uncertainty(forward_backward(logits, mask, *constraints), ids, mask)
    return out[0] if single else out


def _uncertainty(lattice: Lattice, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    marginals = lattice.marginals()  # (B, N, L)
    right = np.take_along_axis(marginals, ids[..., None], axis=-1)[..., 0]  # (B, N)
    wrong = np.where(mask, 1.0 - right, 0.0).sum(axis=1)  # expected wrong positions, (B,)
    return wrong / np.maximum(mask.sum(axis=1), 1)


def spans_and_uncertainty(logits, labels: list[str], ranges, scheme: str = "BIO", constrained: bool = True,
                          mask=None, transitions: Transitions | None = None,
                          temperature: float = 1.0) -> tuple[list[list[Span]], np.ndarray]:
    """``(decode_spans(...), uncertainty(...))`` of a batch ``logits: (B, N, L)``, from one decode
    and one lattice."""
    logits, mask, _, constraints, ids = _decoded(logits, labels, scheme, constrained, mask, transitions,
                                                 temperature)
    lattice = forward_backward(logits, mask, *constraints)
    return _spans(logits, labels, ranges, scheme, mask, constraints, ids, lattice), _uncertainty(lattice, ids, mask)


def check_min_score(value, name: str = "min_score") -> float:
    """``value`` as a float if it is a number from 0 to 1 (a span scoring below it is dropped),
    else a TagtuneError saying so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise TagtuneError(f"{name} must be a number from 0 to 1, got {shown}")
    return float(value)
