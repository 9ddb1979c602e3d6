"""Offsets repaired where normalisation composed characters: any tokenizer whose normaliser folds
a character into the one before it (NFKC's ``ｶﾞ`` -> ``ガ``, a combining mark) gets offsets that
end before the folded character; :func:`repair_offsets` extends them over it."""

from __future__ import annotations

import unicodedata


def _absorbed(text: str, start: int, end: int) -> bool:
    """Whether ``text[end]`` was folded into the token ``text[start:end]`` by normalisation: a
    mark, or a character that composes with the token's end (half-width ``ﾞ`` after ``ｶ``)."""
    char = text[end]
    if char.isspace():
        return False
    if unicodedata.category(char).startswith("M"):
        return True
    head = text[max(start, end - 8) : end]
    joined = unicodedata.normalize("NFKC", head + char)
    return joined != unicodedata.normalize("NFKC", head) + unicodedata.normalize("NFKC", char)


def repair_offsets(text: str, offsets: list[tuple[int, int]], skip: list[bool]) -> list[tuple[int, int]]:
    """Offsets that also cover the characters normalisation folded into a token's last character.

    `tokenizers` aligns a composed character with the first character it came from only: with
    ``ｶﾞ`` normalised to ``ガ``, a token ending in ``ガ`` would end before the ``ﾞ``. Each token
    (except those with ``skip`` set) is extended over the characters right after it that no later
    token covers and that normalisation absorbed into it.
    """
    out = list(offsets)
    next_start = len(text)
    for i in range(len(out) - 1, -1, -1):
        start, end = out[i]
        if start == end:
            continue
        if not skip[i]:
            stop = end
            while stop < next_start and _absorbed(text, start, stop):
                stop += 1
            out[i] = (start, stop)
        next_start = min(next_start, start)
    return out
