"""SpanTagger: an encoder and a span head -> character spans for texts, nested ones included.

texts -> tokens with offsets -> units -> windows of at most ``max_length`` tokens, each with the
units it holds whole (tagtune.data.candidates.span_windows) -> batches of about
``batch_tokens`` tokens -> hidden states -> every candidate span of up to ``max_width`` units
of each window (batch_candidates) -> the span head's probabilities -> per text, each candidate
from the window where it lies farthest from an edge (merge_window_candidates) -> the spans the
overlap rule keeps (tagtune.data.spandecode) -> characters: the start of the first unit to the
end of the last.

Two backends score the candidates, through one loop over the windows (:func:`score_windows`):
PyTorch on packed batches (:class:`PackedSpanScorer`, the encoder's ``hidden_states`` and the
head), and ONNX Runtime on padded batches through a graph that ``tagtune export`` wrote
(tagtune.inference.onnx_backend.OnnxSpanScorer). A scorer cuts the windows into batches and tells
where each window's first token lies in its batch's hidden states (packed: ``cu_seqlens[b]``;
padded: ``b * L``), which places the candidates' tokens; torch is imported only by the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tagtune.data.align import Units, units_of, with_specials
from tagtune.data.candidates import BatchCandidates, SpanWindow, batch_candidates, span_windows
from tagtune.data.decode import check_min_score, check_temperature, temper_probs
from tagtune.data.spandecode import (
    candidate_labels,
    check_overlap,
    chosen_candidates,
    merge_window_candidates,
    span_uncertainty,
)
from tagtune.errors import TagtuneError
from tagtune.inference.onnx_backend import OnnxSpanModel, OnnxSpanScorer, check_onnx_options
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


class SpanScorer(Protocol):
    """Scores the candidates of windows on one backend: :class:`PackedSpanScorer` (PyTorch) or
    tagtune.inference.onnx_backend.OnnxSpanScorer (ONNX Runtime)."""

    backend: str
    batch_tokens: int

    def score(self, sequences: list[list[int]], candidates: Callable[[list[int], Sequence[int]], BatchCandidates]
              ) -> Iterator[tuple[list[int], BatchCandidates, np.ndarray]]:
        """For each batch of ``sequences`` (``[CLS] tokens [SEP]``): the indices of its
        sequences, ``candidates(batch, offsets)`` with ``offsets[b]`` where sequence b's first
        token lies in the batch's flat hidden states, and their probabilities (C, labels + 1)."""
        ...


class PackedSpanScorer:
    """The candidates of windows scored on PyTorch: packed batches of about ``batch_tokens``
    tokens (tagtune.inference.runtime.packed_batches) -> the encoder's hidden states (T, H) ->
    the span head's probabilities, in eval mode."""

    backend = "torch"

    def __init__(self, model: TokenClassifier, head: SpanHead, device: torch.device, batch_tokens: int):
        self.model, self.head, self.device, self.batch_tokens = model, head, device, batch_tokens

    def score(self, sequences: list[list[int]], candidates: Callable[[list[int], Sequence[int]], BatchCandidates]
              ) -> Iterator[tuple[list[int], BatchCandidates, np.ndarray]]:
        """See :meth:`SpanScorer.score`; ``offsets`` are the packed batch's ``cu_seqlens[:-1]``."""
        import torch

        from tagtune.models.spanhead import span_probabilities

        with evaluating([self.model, self.head], self.device):
            for batch, packed in packed_batches(sequences, self.batch_tokens, self.device):
                found = candidates(batch, packed.cu_seqlens[:len(batch)].tolist())
                hidden = self.model.hidden_states(packed.input_ids, packed.cu_seqlens, packed.max_seqlen)  # (T, H)
                start, end, width = (torch.as_tensor(a, device=self.device)
                                     for a in (found.start_token, found.end_token, found.width))
                yield batch, found, span_probabilities(self.head(hidden, start, end, width)).cpu().numpy()  # (C, L+1)


def score_windows(scorer: SpanScorer, sequences: list[list[int]], firsts: list[Sequence[int]],
                  lasts: list[Sequence[int]], max_width: int, num_labels: int,
                  starts: int = 1) -> list[tuple[np.ndarray, ...]]:
    """Per window, its candidates' ``(start unit, end unit, probs (C, num_labels))``, in window
    units, scored by ``scorer``.

    Args:
        scorer: The backend.
        sequences: Per window, its tokens ``[CLS] tokens [SEP]``.
        firsts: Per window, the first token of each unit it holds whole, counted from its first
            token of text (0 right after [CLS]); a window without units is not run.
        lasts: Per window, the last token with characters of each of those units.
        max_width: The most units a candidate spans.
        num_labels: "none" and the entity labels, the columns of ``probs``.
        starts: The special tokens before each window's text (the tokenizer's ``starts``).
    """
    empty = np.zeros(0, dtype=np.int64)
    scored = [(empty, empty, np.zeros((0, num_labels), dtype=np.float32))] * len(sequences)
    run = [w for w, first in enumerate(firsts) if len(first)]

    def candidates(batch: list[int], offsets: Sequence[int]) -> BatchCandidates:
        return batch_candidates([firsts[run[i]] for i in batch], [lasts[run[i]] for i in batch], offsets, max_width,
                                starts=starts)

    for batch, found, probs in scorer.score([sequences[w] for w in run], candidates):
        cuts = np.cumsum(np.bincount(found.window, minlength=len(batch)))[:-1]
        for i, s, e, p in zip(batch, np.split(found.start_unit, cuts), np.split(found.end_unit, cuts),
                              np.split(probs, cuts)):
            scored[run[i]] = (s, e, p)
    return scored


class SpanTagger:
    """Character spans for texts from an encoder and a span head: ``SpanTagger(...)(texts)``.

    Each text is cut into windows of ``max_length`` tokens overlapping by ``stride``, as the
    token head's Tagger cuts them; every stretch of up to ``max_width`` units a window holds
    whole is a candidate, scored by the head for "none" and each label. A candidate seen by
    several windows takes its probabilities from the one where it lies farthest from an edge.

    Attributes:
        model: The encoder (a TokenClassifier, used through ``hidden_states``), or the ONNX
            graph of the encoder and head (an OnnxSpanModel that ``tagtune export`` wrote).
        head: The span head; None on ONNX Runtime, whose graph holds it.
        tokenizer: The model's tokenizer, with character offsets.
        labels: The entity labels, column i + 1 of the head's output.
        max_width: The most units a candidate spans.
        max_length: Tokens per window, the special tokens included.
        stride: Tokens shared by consecutive windows.
        backend: "torch" or "onnx".
        device: Where the model and head run, a torch.device; "cpu" for the ONNX backend.
        batch_tokens: Real tokens per forward pass.
        scorer: What scores the candidates of a batch of windows on the backend.
        overlap: The overlap rule of a call that names none ("nested", "flat" or "any").
        min_score: The least score of a span, for a call that names none.
        temperature: The head's logits are divided by it before the softmax (tagtune.json's
            ``temperature``, fitted on dev; 1: the head's own probabilities). The overlap rules
            weigh a candidate by log(p_label / p_none), which it divides by the same T, so the
            spans kept are the same at every T except where a score crosses ``min_score``.

    Example:
        ```python
        tagger = SpanTagger(model, head, tokenizer, ["LOC", "ORG"], max_width=8)
        tagger("University of Tokyo")  # [Span(0, 19, "ORG", ...), Span(14, 19, "LOC", ...)]
        ```
    """

    def __init__(self, model: TokenClassifier | OnnxSpanModel, head: SpanHead | None, tokenizer: Tokenizer,
                 labels: list[str], max_width: int, max_length: int = 128, stride: int = 32,
                 device: str | torch.device = "cpu", batch_tokens: int = BATCH_TOKENS, overlap: str = "nested",
                 min_score: float = 0.5, temperature: float = 1.0):
        """A span tagger over a loaded encoder and span head, both moved to ``device``, or over
        an ONNX span graph (``head`` None; it runs on the CPU).

        Raises:
            ValueError: When the head's outputs are not "none" and the ``labels``, or
                ``max_width`` is wider than the head's widths.
            TagtuneError: When ``overlap``, ``min_score`` or ``temperature`` is out of range, or
                an ONNX graph is given a device other than the CPU.
        """
        check_overlap(overlap)
        self.overlap, self.min_score = overlap, check_min_score(min_score)
        self.temperature = check_temperature(temperature)
        self.backend = getattr(model, "backend", "torch")
        outputs = model if self.backend == "onnx" else head  # an ONNX graph holds its head
        if outputs.num_labels != len(labels) + 1:
            raise ValueError(f"the span head has {outputs.num_labels} outputs, not none and the {len(labels)} labels")
        if not 1 <= max_width <= outputs.max_width:
            raise ValueError(f"max_width must be from 1 to the head's {outputs.max_width}, got {max_width}")
        if self.backend == "onnx":
            check_onnx_options(device, "off")
            self.device, self.model, self.head = "cpu", model, None
            self.scorer: SpanScorer = OnnxSpanScorer(model, tokenizer.pad_id, batch_tokens)
        else:
            import torch

            self.device = torch.device(device)
            self.model = model.to(self.device)
            self.head = head.to(self.device)
            self.scorer = PackedSpanScorer(self.model, self.head, self.device, batch_tokens)
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_width = max_width
        self.max_length = max_length
        self.stride = stride

    @property
    def batch_tokens(self) -> int:
        return self.scorer.batch_tokens

    @batch_tokens.setter
    def batch_tokens(self, value: int) -> None:
        self.scorer.batch_tokens = value

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

    def candidates(self, texts: list[str], temperature: float | None = None) -> list[TextCandidates]:
        """The candidates of each text with the head's probabilities at ``temperature`` (None: the
        tagger's; 1: the head's own), merged over its windows."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TagtuneError(f"text {i} is a {type(text).__name__}, not a string")
        encodings = self.tokenizer.encode_batch(texts)
        units = [units_of(enc) for enc in encodings]
        windows: list[SpanWindow] = []
        for t, (enc, unit) in enumerate(zip(encodings, units)):
            if len(unit):
                windows += span_windows(unit, len(enc), self.max_length, self.stride, text=t,
                                        specials=self.tokenizer.specials)[0]
        scored = self._window_probabilities(windows, [enc.ids for enc in encodings])
        per_text: list[list[int]] = [[] for _ in texts]
        for w, window in enumerate(windows):
            per_text[window.text].append(w)
        width = len(self.labels) + 1
        at = self.temperature if temperature is None else temperature
        out = []
        for t, ws in enumerate(per_text):
            if not ws:
                empty = np.zeros(0, dtype=np.int64)
                out.append(TextCandidates(empty, empty, np.zeros((0, width)), units[t]))
                continue
            start, end, probs = merge_window_candidates([windows[w].units for w in ws], *zip(*(scored[w] for w in ws)))
            out.append(TextCandidates(start, end, temper_probs(probs, at), units[t]))
        return out

    def _window_probabilities(self, windows: list[SpanWindow],
                              ids: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per window, its candidates' ``(start unit, end unit, probs (C, L+1))``, window units."""
        sequences = [with_specials(ids[w.text][slice(*w.tokens)], self.tokenizer.cls_id, self.tokenizer.sep_id)
                     for w in windows]
        return score_windows(self.scorer, sequences, [w.firsts for w in windows], [w.lasts for w in windows],
                             self.max_width, len(self.labels) + 1, starts=self.tokenizer.starts)

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
