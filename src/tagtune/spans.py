"""The records that flow through tagtune: an annotated text and its character spans."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    """A labelled stretch of a text: the characters ``text[start:end]`` carry ``label``.

    Offsets count code points, as Python's string indices do, in the text as given (not
    normalised). Spans compare and sort by ``(start, end, label)``, the score left out, so a
    predicted span equals the gold one it matches. Frozen: spans are hashable and go in sets.

    Attributes:
        start: Index of the first character.
        end: Index after the last character.
        label: The entity type, e.g. ``"PER"`` or ``"KEY"``, without a scheme prefix (``B-``).
        score: On a predicted span, the probability (0 to 1) that exactly these characters form
            one entity of this label; None on an annotated span.

    Example:
        ```python
        text = "Angela Merkel visited Lisbon."
        span = Span(22, 28, "LOC")
        text[span.start:span.end]  # "Lisbon"
        span.to_dict(text)  # {"start": 22, "end": 28, "label": "LOC", "text": "Lisbon"}
        ```
    """

    start: int
    end: int
    label: str
    score: float | None = field(default=None, compare=False)

    def to_dict(self, text: str | None = None) -> dict:
        """The span as a JSON-ready dict, as ``tagtune predict`` writes it.

        Args:
            text: The text the span is in; given, its characters are added as ``"text"``.

        Returns:
            ``start``, ``end`` and ``label``; ``text`` when ``text`` is given; ``score``
                (rounded to 4 decimals) when the span has one.
        """
        out = {"start": self.start, "end": self.end, "label": self.label}
        if text is not None:
            out["text"] = text[self.start:self.end]
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out


@dataclass
class Example:
    """One annotated text: what the training and evaluation readers make of each record.

    Attributes:
        text: The text.
        spans: Its entities, as Spans into ``text`` (without scores).
        source: Where it was read, ``file:line``, for messages; empty for an example made in
            code.

    Example:
        ```python
        Example("Acme hired Ann", [Span(0, 4, "ORG"), Span(11, 14, "PER")])
        ```
    """

    text: str
    spans: list[Span]
    source: str = ""
