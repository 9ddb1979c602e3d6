"""Character spans <-> subword labels, and windows over long texts.

A text's tokens are grouped into *units*, the positions that carry a label: a whole
pre-tokenizer word (its first subword carries the label, the default, as in the transformers
token-classification guide) or every subword (``all_subwords``). Spans are mapped to units
through the tokens' character offsets; a span whose edges fall inside a unit is widened to the
unit's edges and counted, so a caller can warn. Predictions go the other way: unit tags ->
character spans over the units' ranges.

Texts longer than the model's window are cut into overlapping windows. In training every window
is an example; in prediction each token takes its logits from the window where it lies farthest
from an edge, so a span at a window edge is seen with context and is never lost or duplicated.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import numpy as np

from tagtune.data.schemes import OUTSIDE, entity_type, tags_for_entities
from tagtune.errors import TagtuneError
from tagtune.spans import Span
from tagtune.text.tokenizer import Encoding

IGNORE = -100  # label of positions the loss skips (F.cross_entropy's ignore_index)


@dataclass
class Units:
    """The label positions of one tokenised text (special tokens excluded).

    ``first[i]`` is the token index that carries unit i's label; ``ranges[i]`` its characters
    in the original text; ``of_token[t]`` the unit of token t (for a token without characters
    that carries no label, the unit before it, -1 before the first unit); ``last[i]`` the last
    token with characters of unit i (its last subword, or the last byte piece of its last
    character; never a space token after it).
    """

    first: list[int]
    ranges: list[tuple[int, int]]
    of_token: list[int]
    last: list[int]

    def __len__(self) -> int:
        return len(self.first)


def units_of(enc: Encoding, all_subwords: bool = False) -> Units:
    """Group the tokens of ``enc`` (encoded without special tokens) into units.

    A token without characters (one standing for whitespace, such as a lone ``▁`` or ``Ġ``) is
    never a unit of its own and adds nothing to a unit's range; where it begins a word that has
    characters (XLM-R puts a ``▁`` before each word), it carries the word's label, as the first
    subword does in transformers. A token that shares the previous token's characters (a later
    piece of a character split into bytes) belongs to the previous unit, with ``all_subwords``
    too: a character is never labelled twice.
    """
    first: list[int] = []
    ranges: list[tuple[int, int]] = []
    of_token: list[int] = []
    last: list[int] = []
    previous_word = None
    opener = None  # the first token of the current word while the word has no unit yet
    for t, ((start, end), word) in enumerate(zip(enc.offsets, enc.words)):
        if word is None or word != previous_word or t == 0:
            opener = t
        previous_word = word
        if end <= start:
            of_token.append(len(first) - 1)
            continue
        shares = bool(first) and start < ranges[-1][1]
        if not shares and (all_subwords or opener is not None):
            first.append(t if all_subwords else opener)
            ranges.append((start, end))
            last.append(t)
        else:
            s, e = ranges[-1]
            ranges[-1] = (min(s, start), max(e, end))
            last[-1] = t
        opener = None
        of_token.append(len(first) - 1)
    for unit, t in enumerate(first):
        of_token[t] = unit
    return Units(first, ranges, of_token, last)


@dataclass
class AlignStats:
    """What aligning spans to units had to change, summed over texts."""

    spans: int = 0
    widened: int = 0  # edges inside a unit, moved out to the unit's edges
    dropped_empty: int = 0  # the span covers no token (whitespace only, or characters the tokenizer drops)
    dropped_overlap: int = 0  # after widening, the span shares a unit with an earlier span
    merged: int = 0  # after widening, the same units and label as another span (span head)
    examples: list[str] = field(default_factory=list)  # a few sources, for the message

    def note(self, source: str) -> None:
        if source and len(self.examples) < 5:
            self.examples.append(source)

    def add(self, other: AlignStats) -> None:
        self.spans += other.spans
        self.widened += other.widened
        self.dropped_empty += other.dropped_empty
        self.dropped_overlap += other.dropped_overlap
        self.merged += other.merged
        self.examples.extend(other.examples[: max(0, 5 - len(self.examples))])

    def message(self) -> str | None:
        """One line for a warning, or None when nothing changed."""
        parts = []
        if self.widened:
            parts.append(f"{self.widened} widened to token boundaries")
        if self.dropped_empty:
            parts.append(f"{self.dropped_empty} dropped because they cover no token")
        if self.dropped_overlap:
            parts.append(f"{self.dropped_overlap} dropped because they share a token with another span")
        if self.merged:
            parts.append(f"{self.merged} merged with another span of the same label over the same tokens")
        if not parts:
            return None
        where = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"of {self.spans} spans, " + "; ".join(parts) + where


def _unit_extents(spans: list[Span], units: Units, stats: AlignStats, source: str):
    """(span, first unit, last unit, widened) for each of ``spans`` in sorted order, the units
    being those the span overlaps, so its edges widen to theirs. A span that covers no unit is
    counted in ``stats`` and skipped."""
    starts = [s for s, _ in units.ranges]
    ends = [e for _, e in units.ranges]
    for span in sorted(spans):
        # units overlapping [span.start, span.end): ranges are in text order
        lo, hi = bisect_right(ends, span.start), bisect_left(starts, span.end)
        hit = [i for i in range(lo, hi) if ends[i] > starts[i]]
        if not hit:
            stats.dropped_empty += 1
            stats.note(source)
            continue
        i, j = hit[0], hit[-1]
        yield span, i, j, starts[i] != span.start or ends[j] != span.end


def unit_entities(spans: list[Span], units: Units, source: str = "") -> tuple[list[tuple[int, int, str]], AlignStats]:
    """Spans -> (first unit, last unit + 1, label), widened to unit edges where needed; a span
    that shares a unit with an earlier one is dropped (the token head tags each unit once)."""
    stats = AlignStats(spans=len(spans))
    owner = [False] * len(units)
    entities = []
    for span, i, j, widened in _unit_extents(spans, units, stats, source):
        if any(owner[i:j + 1]):
            stats.dropped_overlap += 1
            stats.note(source)
            continue
        if widened:
            stats.widened += 1
            stats.note(source)
        owner[i:j + 1] = [True] * (j + 1 - i)
        entities.append((i, j + 1, span.label))
    return entities, stats


def unit_spans(spans: list[Span], units: Units, source: str = "") -> tuple[list[tuple[int, int, str]], AlignStats]:
    """Spans -> sorted (first unit, last unit + 1, label) as :func:`unit_entities` makes them,
    overlapping and nested spans kept (the span head labels each candidate on its own); spans
    that widen to the same units with the same label are merged into one and counted."""
    stats = AlignStats(spans=len(spans))
    entities: set[tuple[int, int, str]] = set()
    for span, i, j, widened in _unit_extents(spans, units, stats, source):
        if widened:
            stats.widened += 1
            stats.note(source)
        entity = (i, j + 1, span.label)
        if entity in entities:
            stats.merged += 1
            stats.note(source)
        entities.add(entity)
    return sorted(entities), stats


def token_labels(spans: list[Span], enc: Encoding, label2id: dict[str, int], scheme: str,
                 all_subwords: bool = False, source: str = "") -> tuple[list[int], AlignStats]:
    """Per-token label ids for ``enc`` (no special tokens): the unit's tag on the token that
    carries it, IGNORE on the other subwords of a word."""
    units = units_of(enc, all_subwords)
    entities, stats = unit_entities(spans, units, source)
    tags = tags_for_entities(len(units), entities, scheme)
    labels = [IGNORE] * len(enc.ids)
    for unit, t in enumerate(units.first):
        try:
            labels[t] = label2id[tags[unit]]
        except KeyError:
            raise TagtuneError(
                f"{source or 'data'}: label {entity_type(tags[unit])!r} is not one of the model's labels "
                f"({', '.join(sorted({entity_type(k) for k in label2id if k != OUTSIDE}))})"
            ) from None
    return labels, stats


SPECIALS = 2
"""Special tokens around every window by default: a start (CLS) and an end (SEP) token. A Llama-layout
tokenizer adds 0, 1 or 2 (``Tokenizer.specials``)."""


def window_size(max_length: int, specials: int = SPECIALS) -> int:
    """Tokens of text a window of ``max_length`` tokens holds besides its ``specials`` special tokens."""
    return max_length - specials


def windows_of(length: int, max_length: int, stride: int, specials: int = SPECIALS) -> list[tuple[int, int]]:
    """:func:`window_bounds` for windows of ``max_length`` tokens, ``specials`` special tokens included."""
    return window_bounds(length, window_size(max_length, specials), stride)


def window_bounds(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of windows of at most ``size`` tokens covering ``length``
    tokens, consecutive windows overlapping by ``stride`` tokens. One empty window for 0."""
    if size < 1:
        raise TagtuneError(f"the window must hold at least one token besides the special tokens, got {size}")
    if not 0 <= stride < size:
        raise TagtuneError(f"the stride (overlap between windows) must be in [0, {size - 1}], got {stride}")
    if length <= size:
        return [(0, length)]
    step = size - stride
    bounds = []
    start = 0
    while True:
        end = min(start + size, length)
        bounds.append((end - size, end) if end == length else (start, end))
        if end == length:
            return bounds
        start += step


def merge_windows(bounds: list[tuple[int, int]], outputs: list[np.ndarray]) -> np.ndarray:
    """Per-window outputs (window length, ...) -> per-token outputs (text length, ...), numpy arrays.

    Where windows overlap, the first half of the overlap comes from the earlier window and the
    second half from the later one: every token from the window where it is farthest from an edge.
    """
    if len(bounds) == 1:
        return np.asarray(outputs[0])
    pieces = []
    for k, ((start, end), out) in enumerate(zip(bounds, outputs)):
        lo = start if k == 0 else (start + bounds[k - 1][1] + 1) // 2
        hi = end if k == len(bounds) - 1 else (bounds[k + 1][0] + end + 1) // 2
        pieces.append(out[lo - start:hi - start])
    return np.concatenate(pieces)


def with_specials(ids: list[int], cls_id: int | None, sep_id: int | None) -> list[int]:
    """A window's ids: ``ids`` between the start and end token, each left out where it is None
    (a tokenizer that adds no start or no end token)."""
    return [*([] if cls_id is None else [cls_id]), *ids, *([] if sep_id is None else [sep_id])]


def with_ignored(labels: list[int], cls_id: int | None, sep_id: int | None) -> list[int]:
    """A window's labels, IGNORE where :func:`with_specials` puts a start or end token."""
    return with_specials(labels, None if cls_id is None else IGNORE, None if sep_id is None else IGNORE)
