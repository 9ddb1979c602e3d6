"""Entity-level precision, recall and F1: over tag sequences, or over character spans.

An entity counts as found only where the prediction has one with the same boundaries and
label. Both entry points reduce their input to sets of ``(text index, start, end, label)`` and
share one counting and scoring routine, whose numbers are seqeval's:

* per label: precision = tp / predicted, recall = tp / gold, f1 = 2pr / (p + r), each 0 where
  its denominator is 0 (seqeval's ``zero_division="warn"`` values; tagtune does not warn);
* micro: the same over the counts summed over labels;
* macro: the unweighted mean of the per-label scores over every label that has a gold or a
  predicted entity. Where there is no such label seqeval's mean is NaN; here it is 0.

``entity_scores(..., strict=False)`` equals seqeval's default (conlleval) mode and
``strict=True`` its ``mode="strict"`` with ``scheme=IOB2`` (BIO), ``IOBES`` (BIOES) or
``IOB1`` (IO); see tagtune.data.schemes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from tagtune.data.schemes import entities_from_tags
from tagtune.spans import Span


def entity_scores(gold_tags, pred_tags, scheme: str = "BIO", strict: bool = False) -> dict:
    """Scores of predicted tag sequences against gold ones (lists of lists of tag strings,
    paired sequence by sequence and of equal lengths). See the module doc and ``score``."""
    gold_tags, pred_tags = list(gold_tags), list(pred_tags)
    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"{len(gold_tags)} gold sequences but {len(pred_tags)} predicted ones")
    for k, (g, p) in enumerate(zip(gold_tags, pred_tags)):
        if len(g) != len(p):
            raise ValueError(f"sequence {k}: {len(g)} gold tags but {len(p)} predicted ones")

    def keyed(sequences):
        return {(k, start, end, label)
                for k, tags in enumerate(sequences)
                for start, end, label in entities_from_tags(tags, scheme, strict)}

    return score(keyed(gold_tags), keyed(pred_tags))


def span_scores(gold, pred) -> dict:
    """Exact-match scores of predicted character spans against gold ones. ``gold`` and
    ``pred`` hold one iterable per text of ``Span`` or ``(start, end, label)``; a span
    repeated within one text counts once."""
    gold, pred = list(gold), list(pred)
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold texts but {len(pred)} predicted ones")

    def keyed(texts):
        return {(k, *_key(span)) for k, spans in enumerate(texts) for span in spans}

    return score(keyed(gold), keyed(pred))


def count(gold: set, pred: set) -> dict[str, tuple[int, int, int]]:
    """Per label ``(true positives, predicted, gold)`` for sets of hashable entities whose
    last element is the label, labels in sorted order."""
    n_gold = Counter(e[-1] for e in gold)
    n_pred = Counter(e[-1] for e in pred)
    n_tp = Counter(e[-1] for e in gold & pred)
    return {label: (n_tp[label], n_pred[label], n_gold[label]) for label in sorted(n_gold.keys() | n_pred.keys())}


def _prf(tp: int, predicted: int, actual: int) -> tuple[float, float, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    denom = precision + recall
    f1 = 2.0 * precision * recall / denom if denom else 0.0
    return precision, recall, f1


def score(gold: set, pred: set) -> dict:
    """The score dict for two sets of entities (see ``count``):

    ``{"precision", "recall", "f1"}`` (micro), ``{"macro_precision", "macro_recall",
    "macro_f1"}``, ``"support"`` (gold entities) and ``"per_label": {label: {"precision",
    "recall", "f1", "support"}}``.
    """
    counts = count(gold, pred)
    per_label = {}
    for label, (tp, predicted, actual) in counts.items():
        p, r, f = _prf(tp, predicted, actual)
        per_label[label] = {"precision": p, "recall": r, "f1": f, "support": actual}
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    p, r, f = _prf(*totals)
    n = len(per_label)

    def mean(key):
        return sum(row[key] for row in per_label.values()) / n if n else 0.0

    return {
        "precision": p,
        "recall": r,
        "f1": f,
        "macro_precision": mean("precision"),
        "macro_recall": mean("recall"),
        "macro_f1": mean("f1"),
        "support": totals[2],
        "per_label": per_label,
    }


# -- how well span scores predict correctness ------------------------------------------------------

THRESHOLDS = tuple(k / 20 for k in range(21))
"""Score thresholds of ``calibration``'s precision/recall curve: 0, 0.05, ..., 1."""


def scored_spans(gold, pred) -> list[tuple[float, bool]]:
    """``(score, correct)`` for each predicted span that has a score: correct when a gold span of
    its text has exactly its start, end and label. ``gold`` and ``pred`` as for ``span_scores``
    (``pred`` of ``Span``s, or of dicts with ``start``, ``end``, ``label`` and ``score``)."""
    gold, pred = list(gold), list(pred)
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold texts but {len(pred)} predicted ones")
    out = []
    for spans, predicted in zip(gold, pred):
        truth = {_key(s) for s in spans}
        for span in predicted:
            score = span.get("score") if isinstance(span, dict) else getattr(span, "score", None)
            if score is not None:
                out.append((float(score), _key(span) in truth))
    return out


def _key(span) -> tuple:
    if isinstance(span, Span):
        return span.start, span.end, span.label
    if isinstance(span, dict):
        return span["start"], span["end"], span["label"]
    return tuple(span[:3])


def reliability(scored: list[tuple[float, bool]], bins: int = 10) -> list[dict]:
    """``bins`` equal-width score bins over [0, 1] (the last one closed): for each its bounds
    ``low``, ``high``, the ``count`` of spans scored in it, their ``mean_score`` and the fraction
    of them that are ``correct`` (both None in an empty bin)."""
    sums = [[0, 0.0, 0] for _ in range(bins)]
    for score, correct in scored:
        row = sums[min(max(int(score * bins), 0), bins - 1)]
        row[0] += 1
        row[1] += score
        row[2] += bool(correct)
    return [{"low": k / bins, "high": (k + 1) / bins, "count": n,
             "mean_score": total / n if n else None, "correct": right / n if n else None}
            for k, (n, total, right) in enumerate(sums)]


def expected_calibration_error(scored: list[tuple[float, bool]], bins: int = 10) -> float:
    """The spans' mean gap between score and correctness, bin by bin (``reliability``): the sum over
    bins of (spans in the bin / all spans) x |fraction correct - mean score|; 0 without spans."""
    table = reliability(scored, bins)
    total = sum(b["count"] for b in table)
    return sum(b["count"] / total * abs(b["correct"] - b["mean_score"]) for b in table if b["count"]) if total else 0.0


def threshold_curve(scored: list[tuple[float, bool]], n_gold: int, thresholds=THRESHOLDS) -> list[dict]:
    """For each threshold, the spans scoring at least that much (``spans``) and their
    ``precision`` (None when there are none) and ``recall`` against ``n_gold`` gold spans."""
    out = []
    for t in thresholds:
        kept = [correct for score, correct in scored if score >= t]
        right = sum(kept)
        out.append({"threshold": t, "spans": len(kept), "precision": right / len(kept) if kept else None,
                    "recall": right / n_gold if n_gold else 0.0})
    return out


def calibration(gold, pred, bins: int = 10) -> dict:
    """How well predicted spans' scores say which are right: ``spans`` (scored predictions),
    ``gold`` (gold spans), ``ece`` (``expected_calibration_error``), ``bins`` (``reliability``) and
    ``thresholds`` (``threshold_curve``). ``gold`` and ``pred`` as for ``scored_spans``."""
    gold = list(gold)
    scored = scored_spans(gold, pred)
    n_gold = sum(len({_key(s) for s in spans}) for spans in gold)
    return {"spans": len(scored), "gold": n_gold, "ece": expected_calibration_error(scored, bins),
            "bins": reliability(scored, bins), "thresholds": threshold_curve(scored, n_gold)}


def average_precision(scored: list[tuple[float, bool]]) -> float:
    """Mean, over the right spans, of the precision of the spans ranked at or above each (ranked by
    score, highest first; ties in the given order): how well the scores rank right spans before
    wrong ones, whatever their scale. 0 without a right span."""
    hits, total = 0, 0.0
    for rank, (_, right) in enumerate(sorted(scored, key=lambda x: -x[0]), start=1):
        if right:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def brier_score(scored: list[tuple[float, bool]]) -> float:
    """The mean of (score - correct)^2 over the spans, correct being 1 or 0; 0 without spans."""
    return sum((score - bool(right)) ** 2 for score, right in scored) / len(scored) if scored else 0.0


NLL_FLOOR = 1e-7
"""Scores are held within [NLL_FLOOR, 1 - NLL_FLOOR] in ``log_loss``, so that one span scored 1 and
wrong costs a finite -log(1e-7) = 16.1 rather than infinity."""


def log_loss(scored: list[tuple[float, bool]]) -> float:
    """The mean negative log-likelihood of the spans' correctness under their scores: -log(score)
    for a right span, -log(1 - score) for a wrong one; 0 without spans."""
    total = 0.0
    for score, right in scored:
        p = min(max(score, NLL_FLOOR), 1.0 - NLL_FLOOR)
        total -= math.log(p if right else 1.0 - p)
    return total / len(scored) if scored else 0.0


def score_quality(scored: list[tuple[float, bool]], bins: int = 10) -> dict:
    """``spans``, ``right``, ``ece`` (``expected_calibration_error``), ``average_precision``,
    ``brier`` (``brier_score``) and ``nll`` (``log_loss``) of ``(score, correct)`` pairs."""
    return {"spans": len(scored), "right": sum(bool(r) for _, r in scored),
            "ece": expected_calibration_error(scored, bins), "average_precision": average_precision(scored),
            "brier": brier_score(scored), "nll": log_loss(scored)}


TEMPERATURES = (0.05, 20.0)
"""The range ``fit_temperature`` searches."""


def fit_temperature(scores_at: Callable[[float], list[float]], correct: list[bool], grid: int = 25,
                    tolerance: float = 1e-3) -> float:
    """The temperature T in TEMPERATURES that minimises the mean negative log-likelihood
    (``log_loss``) of ``correct`` under ``scores_at(T)``, the scores of the same spans, in the
    same order, with the logits divided by T.

    A search over log T: ``grid`` points evenly spaced over the range (and T = 1), then
    golden-section search between the best point's neighbours down to ``tolerance`` in log T.
    The likelihood of one T is not always unimodal in T; the grid finds the best basin, the
    golden section its bottom. The T returned never scores worse than T = 1 on these spans.
    """
    correct = [bool(c) for c in correct]

    def loss(log_t: float) -> float:
        return log_loss(list(zip(scores_at(math.exp(log_t)), correct)))

    low, high = (math.log(t) for t in TEMPERATURES)
    points = sorted({low + (high - low) * k / (grid - 1) for k in range(grid)} | {0.0})
    losses = [loss(x) for x in points]
    best = min(range(len(points)), key=lambda k: (losses[k], abs(points[k])))  # a tie: nearer T = 1
    a, b = points[max(best - 1, 0)], points[min(best + 1, len(points) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    candidates = [(losses[best], points[best]), (fc, c), (fd, d)]
    value, log_t = min(candidates, key=lambda x: (x[0], abs(x[1])))
    return math.exp(log_t) if value < losses[points.index(0.0)] else 1.0
