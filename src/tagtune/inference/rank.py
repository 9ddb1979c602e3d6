"""Ranking texts by how unsure a tagger is of them: each text's spans and its uncertainty, the
score that select and annotate's suggestions order texts by."""

from __future__ import annotations

from tagtune.inference.spantagger import SpanTagger
from tagtune.progress import Progress
from tagtune.spans import Span


def score(tagger, texts: list[str], progress: bool = False,
          batch_texts: int = 512) -> tuple[list[list[Span]], list[float]]:
    """The tagger's spans for each text and its uncertainty, tagged ``batch_texts`` at a time,
    with a progress bar on stderr when ``progress`` and there is more than one batch. A token
    tagger's uncertainty is :meth:`Tagger.uncertainty` (the expected share of its units tagged
    wrong), a span tagger's :meth:`SpanTagger.uncertainty` (from its span probabilities, under
    its overlap rule and least score)."""
    spans: list[list[Span]] = []
    uncertainty: list[float] = []
    with Progress(len(texts), "ranking", "texts", enabled=progress and len(texts) > batch_texts) as bar:
        for lo in range(0, len(texts), batch_texts):
            chunk = texts[lo:lo + batch_texts]
            if isinstance(tagger, SpanTagger):
                found, unsure = tagger.predict_with_uncertainty(chunk)
            else:
                logits, units = tagger.unit_logits(chunk)
                found, unsure = tagger.spans_and_uncertainty(logits, units)
            spans += found
            uncertainty += unsure
            bar.update(len(chunk))
    return spans, uncertainty
