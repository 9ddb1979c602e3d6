"""SpanTagger: an encoder and a span head -> character spans for texts, nested ones included.

texts -> tokens with offsets -> units -> windows of at most ``max_length`` tokens, each with the
units it holds whole (tagtune.data.candidates.span_windows) -> batches of about
``batch_tokens`` tokens -> hidden states -> every candidate span of up to ``max_width`` units
of each window (batch_candidates) -> the span head's probabilities -> per text, each candidate
from the window where it lies farthest from an edge (merge_window_candidates) -> the spans the
overlap rule keeps (tagtune.data.spandecode) -> characters: the start of the first unit to the
end of the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tagtune.data.align import Units, units_of, with_specials
from tagtune.data.candidates import SpanWindow, batch_candidates, span_windows
from tagtune.data.decode import check_min_score
from tagtune.data.spandecode import (
    candidate_labels,
    check_overlap,
    chosen_candidates,
    merge_window_candidates,
    span_uncertainty,
)
from tagtune.errors import TagtuneError
from tagtune.inference.runtime import BATCH_TOKENS, evaluating, packed_batches
from tagtune.spans import Span

if TYPE_CHECKING:
    import torch

    from tagtune.models.packed import TokenClassifier
    from tagtune.models.spanhead import SpanHead
    from tagtune.text.tokenizer import Tokenizer


@dataclass
class TextCandidates:
    """The candidates of one text, merged over its windows: ``start``, ``end`` (C,) text units
    (end included), ordered by (start, end), and ``probs`` (C, L+1), column 0 "none"."""

    start: np.ndarray
    end: np.ndarray
    probs: np.ndarray
    units: Units


class SpanTagger:
    """Character spans for texts from an encoder and a span head: ``SpanTagger(...)(texts)``.

    Each text is cut into windows of ``max_length`` tokens overlapping by ``stride``, as the
    token head's Tagger cuts them; every stretch of up to ``max_width`` units a window holds
    whole is a candidate, scored by the head for "none" and each label. A candidate seen by
    several windows takes its probabilities from the one where it lies farthest from an edge.

    Attributes:
        model: The encoder (a TokenClassifier, used through ``hidden_states``).
        head: The span head.
        tokenizer: The model's tokenizer, with character offsets.
        labels: The entity labels, column i + 1 of the head's output.
        max_width: The most units a candidate spans.
        max_length: Tokens per window, the special tokens included.
        stride: Tokens shared by consecutive windows.
        device: Where the model and head run, a torch.device.
        batch_tokens: Real tokens per forward pass.
        overlap: The overlap rule of a call that names none ("nested", "flat" or "any").
        min_score: The least score of a span, for a call that names none.

    Example:
        ```python
        tagger = SpanTagger(model, head, tokenizer, ["LOC", "ORG"], max_width=8)
        tagger("University of Tokyo")  # [Span(0, 19, "ORG", ...), Span(14, 19, "LOC", ...)]
        ```
    """

    def __init__(self, model: TokenClassifier, head: SpanHead, tokenizer: Tokenizer, labels: list[str],
                 max_width: int, max_length: int = 128, stride: int = 32, device: str | torch.device = "cpu",
                 batch_tokens: int = BATCH_TOKENS, overlap: str = "nested", min_score: float = 0.5):
        """A span tagger over a loaded encoder and span head, both moved to ``device``.

        Raises:
            ValueError: When the head's outputs are not "none" and the ``labels``, or
                ``max_width`` is wider than the head's widths.
            TagtuneError: When ``overlap`` or ``min_score`` is out of range.
        """
        import torch

        check_overlap(overlap)
        self.overlap, self.min_score = overlap, check_min_score(min_score)

        if head.num_labels != len(labels) + 1:
            raise ValueError(f"the span head has {head.num_labels} outputs, not none and the {len(labels)} labels")
        if not 1 <= max_width <= head.max_width:
            raise ValueError(f"max_width must be from 1 to the head's {head.max_width}, got {max_width}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.head = head.to(self.device)
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_width = max_width
        self.max_length = max_length
        self.stride = stride
        self.batch_tokens = batch_tokens

    def __call__(self, texts: str | list[str], overlap: str | None = None,
                 min_score: float | None = None) -> list[Span] | list[list[Span]]:
        """Spans of one text, or of each text of a list (see :meth:`predict`)."""
        if isinstance(texts, str):
            return self.predict([texts], overlap, min_score)[0]
        return self.predict(list(texts), overlap, min_score)

    def predict(self, texts: list[str], overlap: str | None = None, min_score: float | None = None) -> list[list[Span]]:
        """Spans of each text.

        Args:
            texts: The texts; an empty one, or one without units, has no spans.
            overlap: "nested" (spans disjoint or one within another), "flat" (disjoint) or
                "any" (every candidate scoring at least ``min_score``); None: the tagger's.
            min_score: The least probability (0 to 1) of a span's label; None: the tagger's.

        Returns:
            One list of spans per text, in order, each sorted by (start, end).

        Raises:
            TagtuneError: When a text is not a string, ``overlap`` not one of the three, or
                ``min_score`` not a number from 0 to 1.
        """
        return self.predict_with_uncertainty(texts, overlap, min_score)[0]

    def uncertainty(self, texts: list[str], overlap: str | None = None, min_score: float | None = None) -> list[float]:
        """How unsure the decoding of each text is, 0 to 1 (tagtune.data.spandecode.span_uncertainty);
        0 for a text without units."""
        return self.predict_with_uncertainty(texts, overlap, min_score)[1]

    def predict_with_uncertainty(self, texts: list[str], overlap: str | None = None,
                                 min_score: float | None = None) -> tuple[list[list[Span]], list[float]]:
        """What :meth:`predict` and :meth:`uncertainty` give, from one pass through the model."""
        overlap = self.overlap if overlap is None else overlap
        check_overlap(overlap)
        min_score = check_min_score(self.min_score if min_score is None else min_score)
        spans, unsure = [], []
        for found in self.candidates(texts):
            chosen = chosen_candidates(found.start, found.end, found.probs, overlap, min_score)
            spans.append(self._spans(found, chosen))
            unsure.append(span_uncertainty(found.start, found.end, found.probs, chosen, len(found.units)))
        return spans, unsure

    def candidates(self, texts: list[str]) -> list[TextCandidates]:
        """The candidates of each text with the head's probabilities, merged over its windows."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TagtuneError(f"text {i} is a {type(text).__name__}, not a string")
        encodings = self.tokenizer.encode_batch(texts)
        units = [units_of(enc) for enc in encodings]
        windows: list[SpanWindow] = []
        for t, (enc, unit) in enumerate(zip(encodings, units)):
            if len(unit):
                windows += span_windows(unit, len(enc), self.max_length, self.stride, text=t)[0]
        scored = self._window_probabilities(windows, [enc.ids for enc in encodings])
        per_text: list[list[int]] = [[] for _ in texts]
        for w, window in enumerate(windows):
            per_text[window.text].append(w)
        width = len(self.labels) + 1
        out = []
        for t, ws in enumerate(per_text):
            if not ws:
                empty = np.zeros(0, dtype=np.int64)
                out.append(TextCandidates(empty, empty, np.zeros((0, width)), units[t]))
                continue
            start, end, probs = merge_window_candidates([windows[w].units for w in ws], *zip(*(scored[w] for w in ws)))
            out.append(TextCandidates(start, end, probs, units[t]))
        return out

    def _window_probabilities(self, windows: list[SpanWindow],
                              ids: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per window, its candidates' ``(start unit, end unit, probs (C, L+1))``, window units.
        A window that holds no whole unit has no candidates and is not run."""
        import torch

        from tagtune.models.spanhead import span_probabilities

        empty = np.zeros(0, dtype=np.int64)
        scored = [(empty, empty, np.zeros((0, len(self.labels) + 1), dtype=np.float32))] * len(windows)
        run = [w for w, window in enumerate(windows) if window.firsts]
        sequences = [with_specials(ids[windows[w].text][slice(*windows[w].tokens)], self.tokenizer.cls_id,
                                   self.tokenizer.sep_id) for w in run]
        with evaluating([self.model, self.head], self.device):
            for batch, packed in packed_batches(sequences, self.batch_tokens, self.device):
                mine = [windows[run[i]] for i in batch]
                found = batch_candidates([w.firsts for w in mine], [w.lasts for w in mine],
                                         packed.cu_seqlens[:len(batch)].tolist(), self.max_width)
                hidden = self.model.hidden_states(packed.input_ids, packed.cu_seqlens, packed.max_seqlen)  # (T, H)
                start, end, width = (torch.as_tensor(a, device=self.device)
                                     for a in (found.start_token, found.end_token, found.width))
                probs = span_probabilities(self.head(hidden, start, end, width)).cpu().numpy()  # (C, L+1)
                cuts = np.cumsum(np.bincount(found.window, minlength=len(batch)))[:-1]
                for i, s, e, p in zip(batch, np.split(found.start_unit, cuts), np.split(found.end_unit, cuts),
                                      np.split(probs, cuts)):
                    scored[run[i]] = (s, e, p)
        return scored

    def _spans(self, found: TextCandidates, chosen: np.ndarray) -> list[Span]:
        """The ``chosen`` candidates of a text as character spans, sorted by (start, end)."""
        if len(chosen) == 0:
            return []
        label, score, _ = candidate_labels(found.probs[chosen])
        ranges = np.asarray(found.units.ranges, dtype=np.int64).reshape(-1, 2)  # (n, 2)
        starts = ranges[found.start[chosen], 0]
        ends = ranges[found.end[chosen], 1]
        return [Span(s, e, self.labels[y - 1], p)
                for s, e, y, p in zip(starts.tolist(), ends.tolist(), label.tolist(), score.tolist())]
