"""Entity scores of a trained tagger on annotated examples or an annotated file, and the
temperature that calibrates its span scores on them."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tagtune.data.decode import decode_spans, temper_probs
from tagtune.data.formats import read_examples
from tagtune.data.metrics import calibration, fit_temperature, score_quality, span_scores
from tagtune.data.spandecode import chosen_candidates
from tagtune.data.schemes import OUTSIDE, entity_type
from tagtune.distributed import Group
from tagtune.inference.spantagger import SpanTagger, TextCandidates
from tagtune.inference.tagger import Tagger
from tagtune.progress import Progress
from tagtune.spans import Example, Span


def evaluate_examples(tagger: Tagger | SpanTagger, examples: list[Example], group: Group | None = None, progress: bool = False,
                      desc: str = "evaluating", chunk: int = 256, with_calibration: bool = False) -> dict:
    """Entity scores of the tagger's spans against the examples' spans (exact character match),
    with ``calibration`` (tagtune.data.metrics.calibration: how well span scores say which spans are
    right) when ``with_calibration``. Texts are tagged ``chunk`` at a time, with a progress bar
    over them when ``progress``. Under torchrun each process tags every world-th example and the
    spans are gathered."""
    group = group or Group()
    texts = [ex.text for ex in examples[group.rank::group.world]]
    mine = []
    with Progress(len(texts), desc, "texts", enabled=progress and group.main and bool(texts)) as bar:
        for lo in range(0, len(texts), chunk):
            mine += tagger.predict(texts[lo:lo + chunk])
            bar.update(len(texts[lo:lo + chunk]))
    parts = group.gather(mine)
    predicted = [parts[i % group.world][i // group.world] for i in range(len(examples))]
    gold = [ex.spans for ex in examples]
    scores = span_scores(gold, predicted)
    if with_calibration:
        scores["calibration"] = calibration(gold, predicted)
    return scores


def calibrate(tagger: Tagger | SpanTagger, examples: list[Example], chunk: int = 256) -> dict:
    """The temperature T that calibrates the span scores of ``tagger`` on ``examples``: the one
    that minimises the negative log-likelihood of "the span is right" (exact characters and
    label) over the spans the tagger finds in them (tagtune.data.metrics.fit_temperature).

    The texts go through the model once; each T only decodes again. A token tagger's spans are
    those it predicts with every span kept (they are the same at every T); a span tagger's, the
    candidates its overlap rule keeps at ``min_score`` 0 (those with p_label > p_none, the same
    at every T), whatever its own ``min_score``. T is absolute: a tagger that has a temperature
    already is scored afresh from T = 1.

    Returns:
        ``temperature``; ``before`` and ``after``: tagtune.data.metrics.score_quality of those
        spans at T = 1 and at the temperature (``spans``, ``right``, ``ece``,
        ``average_precision``, ``brier``, ``nll``); ``predicted``: per example, the spans the
        tagger gives at the temperature (its own ``min_score`` and overlap rule), for
        tagtune.data.metrics.calibration.
    """
    texts = [ex.text for ex in examples]
    truth = [{(s.start, s.end, s.label) for s in ex.spans} for ex in examples]
    if isinstance(tagger, SpanTagger):
        spans_at, predicted_at = _span_head_scores(tagger, texts)
    else:
        spans_at, predicted_at = _token_head_scores(tagger, texts, chunk)
    found = spans_at(1.0)
    correct = [(s.start, s.end, s.label) in gold for spans, gold in zip(found, truth) for s in spans]

    def scores_at(t: float) -> list[float]:
        return [s.score for spans in spans_at(t) for s in spans]

    right = sum(correct)
    temperature = fit_temperature(scores_at, correct) if 0 < right < len(correct) else 1.0
    return {"temperature": temperature,
            "before": score_quality(list(zip(scores_at(1.0), correct))),
            "after": score_quality(list(zip(scores_at(temperature), correct))),
            "predicted": predicted_at(temperature)}


def _token_head_scores(tagger: Tagger, texts: list[str], chunk: int):
    """(spans at T, the tagger's predictions at T) of a token tagger, from one pass of its model."""
    unit_logits, units = tagger.unit_logits(texts)
    batches = [(padded, mask, [u.ranges for u in units[lo:lo + len(padded)]])
               for lo, padded, mask in tagger._padded(unit_logits, chunk)]

    def spans_at(t: float) -> list[list[Span]]:
        return [spans for padded, mask, ranges in batches
                for spans in decode_spans(padded, tagger.labels, ranges, tagger.settings.scheme, tagger.constrained,
                                          mask, tagger.transitions, t)]

    def predicted_at(t: float) -> list[list[Span]]:
        return [[s for s in spans if s.score >= tagger.min_score] for spans in spans_at(t)]

    return spans_at, predicted_at


def _span_head_scores(tagger: SpanTagger, texts: list[str]):
    """(spans at T, the tagger's predictions at T) of a span tagger, from one pass of its model."""
    found = tagger.candidates(texts, temperature=1.0)  # the head's own probabilities
    kept = [chosen_candidates(f.start, f.end, f.probs, tagger.overlap, 0.0) for f in found]

    def at(t: float) -> list[TextCandidates]:
        return [TextCandidates(f.start, f.end, temper_probs(f.probs, t), f.units) for f in found]

    def spans_at(t: float) -> list[list[Span]]:
        return [tagger._spans(c, chosen) for c, chosen in zip(at(t), kept)]

    def predicted_at(t: float) -> list[list[Span]]:
        return [tagger._spans(c, chosen_candidates(c.start, c.end, c.probs, tagger.overlap, tagger.min_score))
                for c in at(t)]

    return spans_at, predicted_at


def unknown_labels(tagger: Tagger | SpanTagger, examples: list[Example]) -> tuple[list[str], list[str]]:
    """(labels of the examples' spans the tagger does not predict, the tagger's labels)."""
    known = sorted({entity_type(tag) for tag in tagger.labels if tag != OUTSIDE})  # B-PER -> PER
    gold = {s.label for ex in examples for s in ex.spans}
    return sorted(gold - set(known)), known


def evaluate(directory: str, path: str, format: str | None = None, keyword_label: str = "KEY",
             device: str | None = None, progress: bool = True, bf16: str = "auto") -> dict:
    """Load a trained tagger and score it on an annotated file (with overlapping and nested
    spans for a span tagger). With ``progress``, says what it does on stderr. Labels in the file that the tagger does not know are warned about: their
    spans can never be found."""
    if progress and Path(directory).expanduser().is_dir():
        print(f"tagtune: loading the tagger in {directory}", file=sys.stderr)
    tagger = Tagger.load(directory, device=device, bf16=bf16)
    # a span tagger is scored on overlapping and nested gold spans too
    examples = read_examples(path, format, keyword_label, overlaps=isinstance(tagger, SpanTagger))
    unknown, known = unknown_labels(tagger, examples)
    if unknown:
        warnings.warn(f"{path}: label{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not among the tagger's "
                      f"({', '.join(known)}); those spans count as missed", stacklevel=2)
    return evaluate_examples(tagger, examples, progress=progress, desc=f"evaluating on {Path(path).name}")
