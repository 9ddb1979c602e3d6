"""Candidate spans for the span head: every stretch of up to K units of a window, and its label.

The span head scores each candidate (i, j), 0 <= i <= j < n units with j - i < K (both ends
inclusive), for every label and "none" (id 0; the entity labels are 1..L in sorted order), so
overlapping and nested spans can be learnt: the span representation of Lee et al. 2017 (end
points and a width embedding) as SpanNER uses it for NER (Fu et al. 2021,
https://arxiv.org/abs/2106.00641). Within a window the candidates are ordered by start, then
end: window_candidates, candidate_labels and batch_candidates all use that order, and
:func:`candidate_index` finds a span in it.

A candidate is represented by the hidden state of its start unit's first token and of its end
unit's last token (:func:`unit_last_tokens`), plus an embedding of its width j - i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tagtune.data.align import SPECIALS, Units, windows_of
from tagtune.errors import TagtuneError



def n_candidates(n_units, max_width: int):
    """Candidates of ``n_units`` units (an int or an integer array) of at most ``max_width``
    units each: ``sum(min(max_width, n - i) for i in range(n))``, in closed form."""
    _check_width(max_width)
    n = np.asarray(n_units, dtype=np.int64)
    full = np.maximum(n - max_width + 1, 0)  # starts with all max_width ends
    tail = np.minimum(n, max_width - 1)  # starts near the end: tail, tail - 1, ..., 1 ends
    count = full * max_width + tail * (tail + 1) // 2
    return int(count) if count.ndim == 0 else count


def candidate_index(n_units: int, max_width: int, starts, ends) -> np.ndarray:
    """Index of candidates (``starts[k]``, ``ends[k]``), ends inclusive, in window_candidates'
    order: the candidates that start before i are all but those of the last n - i units."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    return n_candidates(n_units, max_width) - n_candidates(n_units - starts, max_width) + (ends - starts)


def window_candidates(n_units: int, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of every candidate of a window of ``n_units`` units, int64 arrays of
    :func:`n_candidates` items, both ends inclusive, ordered by start, then end."""
    _check_width(max_width)
    if n_units < 0:
        raise ValueError(f"a window has at least 0 units, got {n_units}")
    per_start = np.minimum(max_width, n_units - np.arange(n_units, dtype=np.int64))  # (n,)
    starts = np.repeat(np.arange(n_units, dtype=np.int64), per_start)  # (C,)
    first_of_start = np.cumsum(per_start) - per_start  # (n,) index of each start's first candidate
    widths = np.arange(len(starts), dtype=np.int64) - np.repeat(first_of_start, per_start)  # (C,)
    return starts, starts + widths


def unit_last_tokens(units: Units) -> list[int]:
    """The last token with characters of each unit (a token index within the text's encoding,
    as ``units.first``): a word's last subword, the last byte piece of its last character; a
    space token after the word (a ``▁``, a run of spaces) is never one. :func:`units_of
    <tagtune.data.align.units_of>` records it while grouping the tokens."""
    return list(units.last)


class CandidateLabels(NamedTuple):
    """The label of each candidate, and what could not be a candidate."""

    labels: np.ndarray  # (C,) int64 label id per candidate, 0 for none
    too_wide: int  # entities wider than max_width units: they have no candidate


def candidate_labels(n_units: int, max_width: int, entities: Sequence[tuple[int, int, int]],
                     source: str = "") -> CandidateLabels:
    """The label id of each candidate of :func:`window_candidates` order (0 for none), from
    ``entities`` ``(first unit, last unit + 1, label id)``, nested and overlapping ones
    included. Exact duplicates are merged; one extent with two labels is an error (a candidate
    has one label), naming ``source``. Entities wider than ``max_width`` are counted."""
    labels = np.zeros(n_candidates(n_units, max_width), dtype=np.int64)
    found = np.asarray(entities, dtype=np.int64).reshape(-1, 3)  # (m, 3): i, j exclusive, label
    i, j, label = found[:, 0], found[:, 1] - 1, found[:, 2]
    bad = (i < 0) | (j < i) | (j >= n_units) | (label < 1)
    if bad.any():
        raise ValueError(f"entity {tuple(found[bad.argmax()].tolist())} is not (i, j, label) with "
                         f"0 <= i < j <= {n_units} and a label id >= 1")
    fits = j - i < max_width
    rows = np.unique(np.stack([i[fits], j[fits], label[fits]], axis=1), axis=0)  # (m', 3) sorted, duplicates merged
    clash = np.flatnonzero((rows[1:, 0] == rows[:-1, 0]) & (rows[1:, 1] == rows[:-1, 1]))
    if clash.size:
        (a, b, x), y = rows[clash[0]].tolist(), int(rows[clash[0] + 1, 2])
        raise TagtuneError(f"{source or 'data'}: units [{a}, {b + 1}) carry two labels, ids {x} and {y}; "
                           "a candidate span has one label")
    labels[candidate_index(n_units, max_width, rows[:, 0], rows[:, 1])] = rows[:, 2]
    return CandidateLabels(labels, int((~fits).sum()))


@dataclass
class BatchCandidates:
    """The candidates of a packed batch of windows, flat over the batch (C in all), in window
    order, then window_candidates' order within each window."""

    start_token: np.ndarray  # (C,) position in the packed stream of the start unit's first token
    end_token: np.ndarray  # (C,) position in the packed stream of the end unit's last token
    width: np.ndarray  # (C,) end_unit - start_unit, 0..max_width - 1
    window: np.ndarray  # (C,) the sequence (window) of the batch it belongs to
    start_unit: np.ndarray  # (C,) unit index within its window
    end_unit: np.ndarray  # (C,) unit index within its window, inclusive
    labels: np.ndarray | None = None  # (C,) label id, 0 for none; None without entities
    too_wide: int = 0  # entities wider than max_width units, so with no candidate

    def __len__(self) -> int:
        return len(self.start_token)


def batch_candidates(
    firsts: Sequence[Sequence[int]],
    lasts: Sequence[Sequence[int]],
    offsets: Sequence[int],
    max_width: int,
    entities: Sequence[Sequence[tuple[int, int, int]]] | None = None,
    sources: Sequence[str] | None = None,
    starts: int = 1,
) -> BatchCandidates:
    """The candidates of a packed batch of windows (sequence b is ``[CLS] tokens [SEP]`` from
    ``offsets[b]`` on, i.e. ``cu_seqlens[:-1]``).

    Args:
        firsts: Per window, the first token of each of its units, counted from the window's
            first token of text (0 right after [CLS]).
        lasts: Per window, the last token with characters of each unit, counted the same way.
        offsets: Per window, the position of its [CLS] token in the packed stream.
        max_width: K, the most units a candidate spans.
        entities: Per window, its ``(first unit, last unit + 1, label id)`` entities, for labels.
        sources: Per window, where it comes from (``file:line``), for an error in its entities.
        starts: The special tokens before a window's text (the tokenizer's ``starts``: 1 for
            [CLS] or a BOS token, 0 where the template adds none, as Qwen's).
    """
    if not len(firsts) == len(lasts) == len(offsets):
        raise ValueError(f"{len(firsts)} windows of first tokens, {len(lasts)} of last tokens, {len(offsets)} offsets")
    if entities is not None and len(entities) != len(firsts):
        raise ValueError(f"{len(firsts)} windows, {len(entities)} of entities")
    parts = {name: [] for name in ("start_token", "end_token", "window", "start_unit", "end_unit", "labels")}
    too_wide = 0
    for b, (first, last, offset) in enumerate(zip(firsts, lasts, offsets)):
        first = np.asarray(first, dtype=np.int64)
        last = np.asarray(last, dtype=np.int64)
        if first.shape != last.shape:
            raise ValueError(f"window {b}: {len(first)} first tokens but {len(last)} last tokens")
        first_units, last_units = window_candidates(len(first), max_width)  # (C_b,) each
        parts["start_token"].append(offset + starts + first[first_units])
        parts["end_token"].append(offset + starts + last[last_units])
        parts["window"].append(np.full(len(first_units), b, dtype=np.int64))
        parts["start_unit"].append(first_units)
        parts["end_unit"].append(last_units)
        if entities is not None:
            source = sources[b] if sources is not None else ""
            labelled = candidate_labels(len(first), max_width, entities[b], source)
            parts["labels"].append(labelled.labels)
            too_wide += labelled.too_wide
    flat = {name: np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
            for name, arrays in parts.items()}
    return BatchCandidates(
        start_token=flat["start_token"],
        end_token=flat["end_token"],
        width=flat["end_unit"] - flat["start_unit"],
        window=flat["window"],
        start_unit=flat["start_unit"],
        end_unit=flat["end_unit"],
        labels=flat["labels"] if entities is not None else None,
        too_wide=too_wide,
    )


@dataclass
class SpanWindow:
    """One window of a text for the span head: the units it holds whole, and their entities.

    ``firsts`` and ``lasts`` are as :func:`batch_candidates` takes them (counted from the
    window's first token of text), ``units`` the text's units ``[u0, u1)`` the window holds,
    ``tokens`` its tokens ``[a, b)`` of the text's encoding (special tokens not included), and
    ``entities`` the text's entities lying whole in the window, in window units.
    """

    text: int
    tokens: tuple[int, int]
    units: tuple[int, int]
    firsts: list[int]
    lasts: list[int]
    entities: list[tuple[int, int, int]]


def span_windows(units: Units, length: int, max_length: int, stride: int, text: int = 0,
                 entities: Sequence[tuple[int, int, int]] = (), specials: int = SPECIALS) -> tuple[list[SpanWindow], int]:
    """The windows of one text of ``length`` tokens (as the token head cuts them, see
    ``tagtune.data.align.windows_of``), each with the units whose tokens lie whole in it, and
    the number of ``entities`` (text units, end excluded) that no window holds whole.

    A unit cut by a window's edge belongs to no candidate of that window, and an entity cut by
    an edge is a label only in the windows that hold it whole: a window never learns "none" for
    a span it sees only part of (every candidate of a window is whole in it).
    """
    first, last = np.asarray(units.first, dtype=np.int64), np.asarray(units.last, dtype=np.int64)
    windows, held = [], np.zeros(len(entities), dtype=bool)
    rows = np.asarray(entities, dtype=np.int64).reshape(-1, 3)
    for a, b in windows_of(length, max_length, stride, specials):
        u0 = int(np.searchsorted(first, a, side="left"))  # units are in token order
        u1 = int(np.searchsorted(last, b, side="left"))  # the units whose last token is before b
        u1 = max(u0, u1)
        whole = (rows[:, 0] >= u0) & (rows[:, 1] <= u1)
        held |= whole
        windows.append(SpanWindow(text, (a, b), (u0, u1), (first[u0:u1] - a).tolist(), (last[u0:u1] - a).tolist(),
                                  [(i - u0, j - u0, y) for i, j, y in rows[whole].tolist()]))
    return windows, int((~held).sum())


def _check_width(max_width: int) -> None:
    if isinstance(max_width, bool) or not isinstance(max_width, (int, np.integer)) or max_width < 1:
        raise TagtuneError(f"the widest span (--max-span-words) must be a whole number of at least 1 word, "
                           f"got {max_width!r}")
