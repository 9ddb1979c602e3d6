"""The records that flow through tagtune: an annotated text and its character spans."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    """Characters ``text[start:end]`` carry ``label``. ``score`` is set on predictions (0..1)."""

    start: int
    end: int
    label: str
    score: float | None = field(default=None, compare=False)

    def to_dict(self, text: str | None = None) -> dict:
        out = {"start": self.start, "end": self.end, "label": self.label}
        if text is not None:
            out["text"] = text[self.start:self.end]
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out


@dataclass
class Example:
    """One annotated text. ``source`` is ``file:line`` where it was read, for messages."""

    text: str
    spans: list[Span]
    source: str = ""
