"""A tagtune tagger as a spaCy pipeline component: ``nlp.add_pipe("tagtune", config={"model": DIR})``.

The factory is registered with spaCy's ``@Language.factory`` when this module is imported, and
tagtune's ``spacy_factories`` entry point names it, so spaCy finds ``"tagtune"`` without the
user importing tagtune (spaCy loads every entry point of that group when it makes a pipeline).

The tagger reads the doc's text and returns character spans; each is placed on the doc's tokens
with ``doc.char_span(..., alignment_mode="expand")``, which widens a span that cuts a token to
that token's edges (the spaCy tokenizer splits some texts differently from the tagger's). Every
span goes into ``doc.spans[spans_key]``; ``doc.ents`` gets them all where they do not overlap,
else the subset spaCy's ``filter_spans`` keeps: the longest first, then the earliest.
Each span's score (its probability, 0 to 1) is ``span._.tagtune_score``.

This module imports only spaCy and tagtune's errors: spaCy imports it for every pipeline it
makes, so the tagger (and torch) is loaded when a component is made, not before.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Optional

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans, minibatch

from tagtune.errors import TagtuneError

SCORE = "tagtune_score"
"""The extension attribute of a span's score: ``span._.tagtune_score``."""

DEFAULT_CONFIG = {"model": None, "batch_size": 64, "min_score": None, "spans_key": "tagtune", "device": None,
                  "bf16": "auto", "overlap": "nested"}


def score_of(span: Span) -> float | None:
    """The score the component gave ``span`` (its characters and label), None for another span."""
    return span.doc.user_data.get((SCORE, span.start_char, span.end_char, span.label_))


def set_score(span: Span, score: float) -> None:
    # keyed by the label too: spaCy's own extension values are keyed by the characters alone,
    # and two labels can widen onto the same tokens
    span.doc.user_data[(SCORE, span.start_char, span.end_char, span.label_)] = score


class TagtuneComponent:
    """Sets ``doc.ents``, ``doc.spans[spans_key]`` and ``span._.tagtune_score`` from a tagtune tagger.

    Attributes:
        name: The component's name in the pipeline.
        model: The tagger folder or Hub id, as the config gives it.
        tagger: The loaded tagtune.inference.tagger.Tagger (or SpanTagger).
        batch_size: Docs tagged together by :meth:`pipe` when spaCy gives no batch size.
        spans_key: The key of ``doc.spans`` that holds all the spans.
        widened: Spans widened to token edges so far, over all docs.
        dropped: Spans that could not be placed on tokens, left out.
    """

    def __init__(self, name: str, model: str, batch_size: int = 64, min_score: float | None = None,
                 spans_key: str = "tagtune", device: str | None = None, bf16: str = "auto",
                 overlap: str = "nested"):
        """Load the tagger ``model`` (a folder or a Hub repo id ``org/name[@revision]``) as
        ``tagtune.Tagger.load`` does, with ``min_score`` (None: the tagger's default), ``device``
        (None: CUDA when available), ``bf16`` and a span tagger's ``overlap`` rule.

        Raises:
            TagtuneError: When there is no model, it cannot be loaded or is not a tagger, or an
                option is out of range.
        """
        from tagtune.inference.tagger import Tagger

        if not model:
            raise TagtuneError(f"spaCy component {name!r}: no model; give a tagger folder or Hub id, e.g. "
                               f"nlp.add_pipe(\"tagtune\", config={{\"model\": \"my-tagger\"}})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise TagtuneError(f"spaCy component {name!r}: batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(spans_key, str) or not spans_key:
            raise TagtuneError(f"spaCy component {name!r}: spans_key must be a non-empty string, got {spans_key!r}")
        try:
            self.tagger = Tagger.load(model, device=device, min_score="auto" if min_score is None else min_score,
                                      bf16=bf16, overlap=overlap)
        except TagtuneError as e:
            raise TagtuneError(f"spaCy component {name!r}: {e}") from None
        self.name, self.model, self.batch_size, self.spans_key = name, model, batch_size, spans_key
        self.widened = self.dropped = 0
        self._warned = False
        if not Span.has_extension(SCORE):  # registered once; another registration is left as it is
            Span.set_extension(SCORE, getter=score_of)

    def __call__(self, doc: Doc) -> Doc:
        """Tag one doc."""
        self._annotate([doc], self.tagger.predict([doc.text]))
        return doc

    def pipe(self, docs: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        """Tag docs ``batch_size`` at a time (None: the component's), each batch through one call
        of the tagger's batched predict; yields them in order."""
        for batch in minibatch(docs, size=batch_size or self.batch_size):
            self._annotate(batch, self.tagger.predict([doc.text for doc in batch]))
            yield from batch

    def _annotate(self, docs: list[Doc], found: list[list]) -> None:
        """Place each doc's spans on its tokens; warn, once, of spans widened to token edges."""
        widened = dropped = total = 0
        for doc, spans in zip(docs, found):
            w, d = self._set_spans(doc, spans)
            widened, dropped, total = widened + w, dropped + d, total + len(spans)
        self.widened += widened
        self.dropped += dropped
        if (widened or dropped) and not self._warned:
            self._warned = True
            left_out = f", {dropped} left out (no token under them)" if dropped else ""
            warnings.warn(f"spaCy component {self.name!r}: {widened} of {total} spans widened to whole tokens"
                          f"{left_out}, as the spaCy tokenizer splits these texts differently from the tagger's "
                          f"(later ones are counted in .widened and .dropped, not warned of)", stacklevel=3)

    def _set_spans(self, doc: Doc, found: list) -> tuple[int, int]:
        """Set ``doc.spans[spans_key]``, ``doc.ents`` and the scores from the tagger's spans of
        ``doc``; returns how many were widened and how many could not be placed."""
        widened = dropped = 0
        best: dict[tuple[int, int, str], tuple[Span, float]] = {}  # two spans widened onto one keep the best score
        for s in found:
            span = doc.char_span(s.start, s.end, s.label, alignment_mode="expand")
            if span is None or not len(span):
                dropped += 1
                continue
            widened += (span.start_char, span.end_char) != (s.start, s.end)
            key = (span.start, span.end, s.label)
            if key not in best or s.score > best[key][1]:
                best[key] = (span, s.score)
        spans = [best[key][0] for key in sorted(best)]
        for span, score in best.values():
            set_score(span, score)
        doc.spans[self.spans_key] = spans
        doc.ents = filter_spans(spans)  # all of them where none overlap
        return widened, dropped


@Language.factory("tagtune", default_config=DEFAULT_CONFIG, assigns=["doc.ents", "token.ent_iob", "token.ent_type"])
def make_component(nlp: Language, name: str, model: Optional[str], batch_size: int, min_score: Optional[float],
                   spans_key: str, device: Optional[str], bf16: str, overlap: str) -> TagtuneComponent:
    """The ``"tagtune"`` factory: a :class:`TagtuneComponent` from the component's config."""
    return TagtuneComponent(name, model, batch_size, min_score, spans_key, device, bf16, overlap)
